"""Shared Key requests to Azurite for the benchmarks (no SDK needed).

    azurite.py PORT request METHOD PATH [QUERY]   e.g. PUT bench restype=container
    azurite.py PORT count CONTAINER               prints how many blobs the container holds
    azurite.py PORT sas                           prints an account SAS URL (for rclone, which
                                                  reaches Azurite at another port only this way)

404 and 409 answers are not errors (a blob already gone, a container already there).
"""

import base64
import hashlib
import hmac
import re
import sys
import urllib.error
import urllib.request
from email.utils import formatdate
from urllib.parse import quote, unquote

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def request(port, method, path, query=""):
    date = formatdate(usegmt=True)
    pairs = sorted(q.split("=", 1) for q in query.split("&") if q)
    canonical = "".join(f"\n{k}:{unquote(v)}" for k, v in pairs)
    sts = (f"{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2021-08-06"
           f"\n/{ACCOUNT}/{ACCOUNT}/{path}{canonical}")
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest())
    url = f"http://127.0.0.1:{port}/{ACCOUNT}/{path}" + (f"?{query}" if query else "")
    req = urllib.request.Request(url, method=method, headers={
        "x-ms-date": date, "x-ms-version": "2021-08-06",
        "Authorization": f"SharedKey {ACCOUNT}:{sig.decode()}"})
    try:
        with urllib.request.urlopen(req) as answer:
            return answer.read().decode()
    except urllib.error.HTTPError as e:
        if e.code not in (404, 409):
            raise
        return ""


def count(port, container):
    total, marker = 0, ""
    while True:
        query = "comp=list&maxresults=5000&restype=container" + (f"&marker={marker}" if marker else "")
        body = request(port, "GET", container, query)
        total += body.count("<Blob>")
        found = re.search(r"<NextMarker>([^<]+)</NextMarker>", body)
        if not found:
            return total
        marker = found.group(1)


def sas_url(port):
    """An account SAS (blob service; all permissions; http allowed) as a service URL."""
    fields = {"sv": "2019-12-12", "ss": "b", "srt": "sco", "sp": "rwdlacup",
              "se": "2099-01-01T00:00:00Z", "spr": "https,http"}
    sts = "\n".join([ACCOUNT, fields["sp"], fields["ss"], fields["srt"], "", fields["se"], "",
                     fields["spr"], fields["sv"], ""])
    sig = base64.b64encode(hmac.new(base64.b64decode(KEY), sts.encode(), hashlib.sha256).digest())
    query = "&".join(f"{k}={v}" for k, v in fields.items())
    return f"http://127.0.0.1:{port}/{ACCOUNT}?{query}&sig={quote(sig.decode(), safe='')}"


if __name__ == "__main__":
    port, command = sys.argv[1], sys.argv[2]
    if command == "request":
        request(port, *sys.argv[3:])
    elif command == "sas":
        print(sas_url(port))
    elif command == "count":
        print(count(port, sys.argv[3]))
    else:
        sys.exit(f"unknown command {command}: request or count")
