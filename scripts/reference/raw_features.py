# Checks that the shipped SQL derives the flat `customers` table from `generate --raw`'s export,
# column for column and bit for bit, with DuckDB (the single-node SQL reference), and times it.
#   python3 -m venv /tmp/nn && /tmp/nn/bin/pip install duckdb pyarrow
#   mlpipe generate --rows 20000 --raw --out /tmp/raw
#   /tmp/nn/bin/python scripts/reference/raw_features.py /tmp/raw
# With --materialize OUT_DIR it instead does what the raw pipeline's sql stages do (the cleaned
# events and the features written as Parquet under OUT_DIR) and times that.
# {{ as_of }} and {{ as_of_date }} are rendered for the generator's default snapshot time.
import sys
import time
import duckdb
import pyarrow.compute as pc

args = [a for a in sys.argv[1:] if not a.startswith("--")]
data = args[0]
sql = args[1] if len(args) > 1 else "pipelines/sql"
as_of, as_of_date = "TIMESTAMPTZ '2026-11-20 06:00:00+00'", "DATE '2026-11-20'"


def render(q):
    return q.replace("{{ as_of }}", as_of).replace("{{ as_of_date }}", as_of_date)


con = duckdb.connect()
con.execute("SET TimeZone='UTC'")
con.execute(f"CREATE VIEW profiles AS SELECT * FROM read_parquet('{data}/raw/profiles/*.parquet')")
con.execute(f"CREATE VIEW labels AS SELECT * FROM read_parquet('{data}/raw/labels/*.parquet')")
con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{data}/raw/events/*/*.parquet', hive_partitioning=true)")
if "--materialize" in sys.argv:
    # What the raw pipeline's two sql stages do: the cleaned events written as Parquet, the
    # features read from them and written as Parquet (scripts/bench_raw_pipeline.sh).
    out = args[2]
    t = time.time()
    con.execute(f"COPY ({render(open(f'{sql}/cleanup.sql').read())}) TO '{out}/events_clean.parquet' (FORMAT parquet, COMPRESSION zstd)")
    t1 = time.time()
    con.execute(f"CREATE VIEW events_clean AS SELECT * FROM read_parquet('{out}/events_clean.parquet')")
    con.execute(f"COPY ({render(open(f'{sql}/features.sql').read())}) TO '{out}/customers.parquet' (FORMAT parquet, COMPRESSION zstd)")
    t2 = time.time()
    print(f"duckdb {duckdb.__version__}: cleanup {t1 - t:.3f} s, features {t2 - t1:.3f} s, both {t2 - t:.3f} s")
    sys.exit(0)
con.execute("CREATE VIEW events_clean AS " + render(open(f"{sql}/cleanup.sql").read()))
t = time.time()
got = con.sql(render(open(f"{sql}/features.sql").read())).to_arrow_table()
print(f"duckdb {duckdb.__version__}: {got.num_rows} rows in {time.time() - t:.3f} s")
if "--time-only" in sys.argv:  # the engine benchmark: peak memory of the query alone
    sys.exit(0)
flat = con.sql(f"SELECT * FROM read_parquet('{data}/customers/*.parquet') ORDER BY customer_id").to_arrow_table()
assert flat.schema.names == got.schema.names, (flat.schema.names, got.schema.names)
bad = 0
for name in flat.schema.names:
    a, b = flat[name].combine_chunks(), got[name].combine_chunks()
    if a.type != b.type:
        b = b.cast(a.type)
    if not a.equals(b):
        differ = pc.sum(pc.invert(pc.fill_null(pc.equal(a, b), False))).as_py()
        print(f"{name}: {differ} rows differ")
        bad += 1
print("equal to the flat table" if bad == 0 else f"{bad} columns differ")
sys.exit(1 if bad else 0)
