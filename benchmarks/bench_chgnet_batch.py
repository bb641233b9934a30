"""Does batching CHGNet calls pay on this CPU? Energy, forces and stress of N test structures.

Times CHGNet on the first ``--num`` structures of a CDVAE-style CSV three ways: one structure per
call, graph construction alone, and one batched call on the prebuilt graphs (milliseconds per
structure). If the batched call is not much cheaper than one at a time, a batched relaxation (e.g.
torch-sim) cannot make the ranked search's relaxations cheaper.

    python benchmarks/bench_chgnet_batch.py --data ../shared/data/perov_5/test.csv.gz --threads 1
"""

from __future__ import annotations

import argparse
import time

from kldm_cli.data.readers import load_dataset
from kldm_cli.evaluation.relax import load_chgnet
from kldm_cli.threads import set_threads


def milliseconds_per_structure(run, count: int) -> float:
    start = time.perf_counter()
    run()
    return 1000 * (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mp_20/test.csv.gz")
    parser.add_argument("--num", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    set_threads(args.threads)
    structures = [record.to_structure() for record in load_dataset(args.data).records[: args.num]]
    model = load_chgnet()
    model.predict_structure(structures[0], task="efs")  # warm-up
    one_by_one = milliseconds_per_structure(
        lambda: [model.predict_structure(s, task="efs") for s in structures], len(structures)
    )
    graphs: list = []
    building = milliseconds_per_structure(
        lambda: graphs.extend(model.graph_converter(s) for s in structures), len(structures)
    )
    batched = milliseconds_per_structure(
        lambda: model.predict_graph(graphs, task="efs", batch_size=len(graphs)), len(structures)
    )
    atoms = sorted(len(s) for s in structures)
    print(f"{len(structures)} structures of {atoms[0]}-{atoms[-1]} atoms, {args.threads} thread(s)")
    print(f"one per call: {one_by_one:.1f} ms/structure")
    print(f"graph construction: {building:.1f} ms/structure")
    print(f"one batched call on built graphs: {batched:.1f} ms/structure")


if __name__ == "__main__":
    main()
