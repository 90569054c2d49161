#!/usr/bin/env python3
"""convert.py INPUT.csv OUTPUT.json — a stand-in for the seed's CSV → CDF converter.

Reads one day of sensor rows and writes a derived file: row counts and the mean flux of the
rows whose quality flag is 0. Exits non-zero (with a message on stderr) on a malformed row.
"""
import csv
import json
import os
import sys


def main(source: str, target: str) -> int:
    good, bad, total = 0, 0, 0.0
    with open(source, newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            try:
                flux, quality = float(row["flux"]), int(row["quality"])
            except (KeyError, TypeError, ValueError) as error:
                print(f"{source}:{number}: malformed row {row!r}: {error}", file=sys.stderr)
                return 3
            if quality == 0:
                good += 1
                total += flux
            else:
                bad += 1
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target, "w") as out:
        json.dump({"source": os.path.basename(source), "rows": good + bad, "flagged": bad,
                   "mean_flux": round(total / good, 3) if good else None}, out)
        out.write("\n")
    print(f"wrote {target}: {good + bad} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
