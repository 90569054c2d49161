"""The seeds' copier, written for the benchmark the way seed 000 describes it.

A thread pool of work items (20 by default), each copying its files through its own pool
(10 by default), one SQLite commit per file in a state database, create-only uploads:

    seed_copy.py local-s3 LIST SRC_DIR BUCKET PREFIX STATE_DB
    seed_copy.py az-az LIST SRC_CONTAINER DST_CONTAINER STATE_DB

LIST holds one file name per line; files are grouped into work items of 100 (the seed's
work items hold ~25-100 files). S3 comes from AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, Azure from AZURE_STORAGE_CONNECTION_STRING. Prints "copied N".
"""

import os
import sqlite3
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

WORKITEM_WORKERS = int(os.environ.get("WORKITEM_WORKERS", "20"))
FILE_WORKERS = int(os.environ.get("FILE_WORKERS", "10"))
PER_WORKITEM = 100


class State:
    """The seed's state database: a row per file, one commit per update, behind a lock."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS files (workitem_id INTEGER, filename TEXT PRIMARY KEY, status TEXT)"
        )
        self.db.commit()

    def done(self, workitem, name):
        with self.lock:
            self.db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, 'completed')", (workitem, name)
            )
            self.db.commit()


def local_to_s3(src_dir, bucket, prefix):
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        config=Config(max_pool_connections=WORKITEM_WORKERS * FILE_WORKERS),
    )

    def copy(name):
        with open(os.path.join(src_dir, name), "rb") as f:
            body = f.read()
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body, IfNoneMatch="*")

    return copy


def azure_to_azure(src_container, dst_container):
    from azure.core.exceptions import ResourceExistsError
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(
        os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    )
    src = service.get_container_client(src_container)
    dst = service.get_container_client(dst_container)

    def copy(name):
        body = src.download_blob(name).readall()
        try:
            dst.upload_blob(name, body, overwrite=False)
        except ResourceExistsError:
            pass

    return copy


def main():
    mode, listing = sys.argv[1], sys.argv[2]
    if mode == "local-s3":
        copy = local_to_s3(*sys.argv[3:6])
        state = State(sys.argv[6])
    elif mode == "az-az":
        copy = azure_to_azure(*sys.argv[3:5])
        state = State(sys.argv[5])
    else:
        sys.exit(f"unknown mode {mode}: local-s3 or az-az")
    names = [line.strip() for line in open(listing) if line.strip()]
    workitems = [names[i : i + PER_WORKITEM] for i in range(0, len(names), PER_WORKITEM)]
    copied = [0]
    count_lock = threading.Lock()

    def run_workitem(index):
        def one(name):
            copy(name)
            state.done(index, name)
            with count_lock:
                copied[0] += 1

        with ThreadPoolExecutor(FILE_WORKERS) as files:
            list(files.map(one, workitems[index]))

    with ThreadPoolExecutor(WORKITEM_WORKERS) as pool:
        list(pool.map(run_workitem, range(len(workitems))))
    print(f"copied {copied[0]}")


if __name__ == "__main__":
    main()
