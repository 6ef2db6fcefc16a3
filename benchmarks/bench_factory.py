"""Factory and check speed: build definitions for 10, 100 and 1,000 generated notebooks.

Prints, measured in the same run (median of --reps):
* ``hand``: the same AssetSpecs (keys, deps, metadata, owners, kinds, tags, code versions), wrapped in
  one multi-asset per notebook and a Definitions object, built by hand from already-known data (no
  parsing) — the floor a factory can reach;
* ``cold``: `build_bento_definitions` with an empty parse cache (nbformat + sqlglot + all checks);
* ``warm``: `build_bento_definitions` with the parse cache filled (the normal case: files unchanged);
* ``check``: `load_project` (what ``dagster-bento check`` runs, all static checks incl. purpose zones
  with a 500-table policy) next to ``warm``.

Usage: python benchmarks/bench_factory.py [--sizes 10 100 1000] [--reps 3]
"""

import argparse
import gc
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_notebook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagster_bento import build_bento_definitions, load_project  # noqa: E402

N_SOURCES = 500


def generate(root: Path, n: int, seed: int = 7) -> list[dict]:
    """n notebooks, each 3 SQL cells over a pool of 500 source tables and 3 write cells."""
    rnd = random.Random(seed)
    (root / "notebooks").mkdir(parents=True)
    tables = {f"raw.t{i:03d}": {"zones": [rnd.choice(["SALES", "CRM", "PUBLIC"])]} for i in range(N_SOURCES)}
    policy = {"version": 1, "default_schema": "main",
              "zones": {"PUBLIC": {"permits": "*"}, "SALES": {"permits": ["SALES", "ANALYTICS"]},
                        "CRM": {"permits": ["CRM", "ANALYTICS"]}, "ANALYTICS": {"permits": ["ANALYTICS"]}},
              "tables": tables}
    (root / "purpose_zones.yaml").write_text(yaml.safe_dump(policy))
    plan = []
    for k in range(n):
        reads = rnd.sample(sorted(tables), 3)
        cells = [new_code_cell("import pandas as pd")]
        for j, t in enumerate(reads):
            c = new_code_cell(f"%%bento_sql df{j}\nSELECT a.id, a.v, b.w FROM {t} AS a "
                              f"JOIN raw.t{(k + j) % N_SOURCES:03d} AS b ON a.id = b.id WHERE a.v > {j}")
            c.metadata["bento"] = {"type": "sql", "output": f"df{j}"}
            cells.append(c)
        cells.append(new_code_cell("out0 = df0\nout1 = df1.head()\nout2 = df2.describe()"))
        for j in range(3):
            c = new_code_cell(f"%bento_write out{j} mart.nb{k}_out{j}")
            c.metadata["bento"] = {"type": "write", "input": f"out{j}", "table": f"mart.nb{k}_out{j}"}
            cells.append(c)
        nb = new_notebook(cells=cells)
        nbformat.write(nb, root / "notebooks" / f"nb{k}.ipynb")
        (root / "notebooks" / f"nb{k}.bento.yaml").write_text(yaml.safe_dump(
            {"owners": ["owner@example.com"], "zone": "ANALYTICS", "schedules": [{"name": f"nb{k}"}]}))
        deps = sorted({*reads, *(f"raw.t{(k + j) % N_SOURCES:03d}" for j in range(3))})
        plan.append({"name": f"nb{k}", "deps": deps, "outputs": [f"mart.nb{k}_out{j}" for j in range(3)]})
    return plan


def hand_built(plan: list[dict], resource: dg.ConfigurableResource) -> dg.Definitions:
    """The same asset graph, written out by hand from known data."""
    sources = sorted({d for p in plan for d in p["deps"]})
    externals = [dg.AssetSpec(dg.AssetKey(t.split(".")), group_name="warehouse_sources", kinds={"duckdb", "table"},
                              metadata={"dagster/table_name": t, "dagster_bento/purpose_zones": dg.MetadataValue.json(
                                  {"label": ["SALES"], "origin": "declared"})},
                              tags={"bento_zone/SALES": ""}) for t in sources]
    assets = []
    for p in plan:
        specs = [dg.AssetSpec(
            dg.AssetKey(out.split(".")), deps=[dg.AssetKey(d.split(".")) for d in p["deps"]], group_name=p["name"],
            kinds={"jupyter", "sql", "duckdb"}, owners=["owner@example.com"], code_version="0123456789abcdef",
            metadata={"dagster/table_name": out, "dagster_bento/notebook": f"notebooks/{p['name']}.ipynb",
                      "dagster_bento/schedule": p["name"], "dagster_bento/write_cell": 5 + i,
                      "dagster_bento/write_mode": "overwrite", "dagster_bento/zone": "ANALYTICS",
                      "dagster_bento/parameters": dg.MetadataValue.json({}),
                      "dagster_bento/sql": dg.MetadataValue.md("SELECT ..."),
                      "dagster_bento/tables_read": dg.MetadataValue.json(p["deps"]),
                      "dagster_bento/purpose_zones": dg.MetadataValue.json({"label": ["ANALYTICS"],
                                                                            "origin": "computed"})},
            tags={"bento_zone/ANALYTICS": "", "dagster_bento/zone": "ANALYTICS"},
            description=f"Written by cell {5 + i}") for i, out in enumerate(p["outputs"])]

        @dg.multi_asset(name=p["name"], specs=specs, can_subset=False, required_resource_keys={"bento"})
        def _body(context):
            yield from ()

        assets.append(_body)
    return dg.Definitions(assets=[*externals, *assets], resources={"bento": resource})


def timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        gc.collect()  # each rep starts from the same heap: earlier builds' garbage is not billed to it
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from dagster_bento.resources import BentoResource

    resource = BentoResource(project_dir="/tmp", warehouse_url="duckdb:///:memory:")
    hand_built([{"name": "warmup", "deps": ["raw.a"], "outputs": ["mart.w"]}], resource)  # pay imports once
    rows = []
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"bento-bench-{n}-"))
        try:
            plan = generate(root, n)

            def cold() -> None:
                shutil.rmtree(root / ".bento", ignore_errors=True)
                build_bento_definitions(project_dir=root, automation=False)

            cold_s = timed(cold, args.reps)
            build_bento_definitions(project_dir=root, automation=False)  # fill the cache
            # baseline and factory interleaved, so machine noise hits both alike
            hands, warms = [], []
            for _ in range(args.reps):
                hands.append(timed(lambda: hand_built(plan, resource), 1))
                warms.append(timed(lambda: build_bento_definitions(project_dir=root, automation=False), 1))
            hand, warm_s = statistics.median(hands), statistics.median(warms)
            check_s = timed(lambda: load_project(root), args.reps)
            graph = build_bento_definitions(project_dir=root, automation=False).resolve_asset_graph()
            assets = len(graph.get_all_asset_keys())
            rows.append((n, assets, hand, cold_s, warm_s, check_s))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(f"policy: {N_SOURCES} tables; each notebook: 3 SQL cells (6 tables), 3 write cells; median of {args.reps}")
    print("| notebooks | assets | hand-built AssetSpecs s | factory cold s | factory warm (cached) s | "
          "warm / hand | cold / hand | `check` (load_project) s | check / warm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, assets, hand, cold_s, warm_s, check_s in rows:
        print(f"| {n} | {assets} | {hand:.3f} | {cold_s:.3f} | {warm_s:.3f} | {warm_s / hand:.2f}× | "
              f"{cold_s / hand:.2f}× | {check_s:.3f} | {check_s / warm_s:.2f}× |")


if __name__ == "__main__":
    main()
