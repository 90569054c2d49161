use super::*;

fn stores(specs: Vec<(String, StoreSpec)>, env: &[(&str, &str)]) -> Stores {
    Stores::new(
        Path::new("/plans"),
        specs,
        Env::from_pairs(env.iter().copied()),
    )
}

fn parse(url: &str) -> Result<Target, String> {
    stores(vec![], &[])
        .parse(url, url)
        .map_err(|e| e.to_string())
}

#[test]
fn plain_and_file_paths_are_local() {
    assert_eq!(
        parse("out/a.txt"),
        Ok(Target::Local(PathBuf::from("/plans/out/a.txt")))
    );
    assert_eq!(
        parse("/abs/a.txt"),
        Ok(Target::Local(PathBuf::from("/abs/a.txt")))
    );
    assert_eq!(
        parse("file:///abs/a.txt"),
        Ok(Target::Local(PathBuf::from("/abs/a.txt")))
    );
}

#[test]
fn cloud_urls() {
    assert_eq!(
        parse("s3://b/k/x.json"),
        Ok(Target::S3 {
            bucket: "b".into(),
            key: "k/x.json".into()
        })
    );
    assert_eq!(
        parse("gs://b/k"),
        Ok(Target::Gcs {
            bucket: "b".into(),
            key: "k".into()
        })
    );
    assert_eq!(
        parse("azure://c/p/q"),
        Ok(Target::Azure {
            account: None,
            endpoint: None,
            container: "c".into(),
            path: "p/q".into(),
            sas: None
        })
    );
}

#[test]
fn azure_https_urls_carry_account_and_sas() {
    assert_eq!(
        parse("https://acct.blob.core.windows.net/results/a%20b.json?sv=1&sig=zzzz"),
        Ok(Target::Azure {
            account: Some("acct".into()),
            endpoint: Some("https://acct.blob.core.windows.net".into()),
            container: "results".into(),
            path: "a b.json".into(),
            sas: Some("sv=1&sig=zzzz".into()),
        })
    );
}

#[test]
fn bad_urls_are_named_with_the_expected_form() {
    assert_eq!(
        parse("s3:///k"),
        Err("`s3:///k` has no bucket; write it as s3://BUCKET/KEY".to_owned())
    );
    assert!(
        parse("ftp://h/x")
            .is_err_and(|e| e.starts_with("`ftp://h/x` is not a storage URL redrive knows"))
    );
    assert!(parse("https://example.com/x").is_err());
}

#[test]
fn store_prefix_makes_an_endpoint_url_an_azure_location() {
    let spec = StoreSpec {
        account_name: Some("devstoreaccount1".into()),
        ..Default::default()
    };
    let stores = stores(
        vec![("http://127.0.0.1:10000/devstoreaccount1".into(), spec)],
        &[],
    );
    assert_eq!(
        stores
            .parse("http://127.0.0.1:10000/devstoreaccount1/src/a/b.json", "x")
            .ok(),
        Some(Target::Azure {
            account: Some("devstoreaccount1".into()),
            endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            container: "src".into(),
            path: "a/b.json".into(),
            sas: None,
        })
    );
}

#[test]
fn az_without_an_account_says_what_to_set() {
    let error = stores(vec![], &[])
        .resolve("az://c/x")
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(error.is_err_and(|e| e.contains("export AZURE_STORAGE_CONNECTION_STRING")));
}

#[test]
fn operators_are_cached_per_bucket() {
    let stores = stores(vec![], &[("AWS_ENDPOINT_URL", "http://127.0.0.1:1")]);
    let a = stores.resolve("s3://b/one").map(|l| l.path);
    let b = stores.resolve("s3://b/two").map(|l| l.path);
    assert_eq!(
        (a.ok(), b.ok()),
        (Some("one".to_owned()), Some("two".to_owned()))
    );
    assert_eq!(stores.cache.lock().map(|c| c.len()).unwrap_or(0), 1);
}

#[test]
fn secrets_in_urls_are_masked_in_messages() {
    let error = stores(vec![], &[])
        .resolve("https://acct.blob.core.windows.net/?sig=abcdef")
        .map(|_| ())
        .map_err(|e| e.to_string())
        .err()
        .unwrap_or_default();
    assert!(error.contains("sig=***"), "{error}");
    assert!(!error.contains("abcdef"), "{error}");
}

#[test]
fn throttling_is_told_apart_from_other_temporary_errors() {
    let rate_limited = opendal::Error::new(ErrorKind::RateLimited, "SlowDown").set_temporary();
    let server_busy = opendal::Error::new(
        ErrorKind::Unexpected,
        "AzblobError { code: \"ServerBusy\", message: \"busy\" }",
    )
    .set_temporary();
    let reset = opendal::Error::new(ErrorKind::Unexpected, "connection reset").set_temporary();
    assert_eq!(classify(&rate_limited), ErrorClass::Throttled);
    assert_eq!(classify(&server_busy), ErrorClass::Throttled);
    assert_eq!(classify(&reset), ErrorClass::Transient);
}

#[test]
fn a_mistyped_scheme_is_refused_and_named() {
    use super::check_location;
    for (location, says) in [
        ("s3:/bucket/{name}", "write `s3://bucket/`"),
        ("gs:/b/k", "write `gs://b/k`"),
        ("az:container/x", "write `az://container/x`"),
        ("s4://bucket/k", "`s4://` is not a store redrive knows"),
        ("ftp://host/k", "`ftp://` is not a store redrive knows"),
    ] {
        let error = check_location("copy.to", location)
            .err()
            .unwrap_or_default();
        assert!(error.contains(says), "{location}: {error}");
        assert!(error.contains(location), "{location}: {error}");
    }
    for fine in [
        "s3://bucket/{name}",
        "az://c/{name}",
        "out/{name}",
        "/abs/dir/{name}",
        "{url}",
        "file:///tmp/x",
        "https://acct.blob.core.windows.net/c/x",
        "dir/a:b.txt",
    ] {
        assert!(check_location("copy.to", fine).is_ok(), "{fine}");
    }
}

#[test]
fn local_paths_resolve_dot_dot_and_keep_a_prefix_slash() {
    use super::normalized;
    for (path, written, expected) in [
        ("/plans/sub/../in/", "sub/../in/", "/plans/in/"),
        ("/plans/./a//b.txt", "./a//b.txt", "/plans/a/b.txt"),
        ("/plans/../../x", "../../x", "/x"),
        ("/plans/in", "in", "/plans/in"),
    ] {
        assert_eq!(
            normalized(Path::new(path), written),
            PathBuf::from(expected),
            "{path}"
        );
    }
}

#[test]
fn keys_that_storage_would_merge_with_another_are_refused() {
    let check = |url: &str, write: bool| {
        let target = parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        unaddressable(&target, url, write)
    };
    for url in [
        "s3://b/a//k.txt",
        "s3://b//k.txt",
        "s3://b/a/./k.txt",
        "s3://b/a/../k.txt",
        "gs://b/x/./y",
        "az://c/x//y",
    ] {
        assert!(check(url, false).is_some(), "{url} read");
        assert!(check(url, true).is_some(), "{url} write");
    }
    for url in [
        "s3://b/pfx/",
        "s3://b/",
        "az://c/",
        "out/",
        "out/.",
        "out/..",
    ] {
        assert!(check(url, true).is_some(), "{url} written");
    }
    for url in [
        "s3://b/a/k.txt",
        "s3://b/in/",
        "s3://b/",
        "out/a.txt",
        "out/",
    ] {
        assert!(check(url, false).is_none(), "{url} read");
    }
    assert!(check("s3://b/a/k.txt", true).is_none());
    assert!(check("out/a.txt", true).is_none());
    let message = check("s3://b/a//k.txt", false).unwrap_or_default();
    assert!(
        message.contains("would take it for another key"),
        "{message}"
    );
}

#[test]
fn stale_partial_files_are_removed_and_live_ones_kept() {
    let dir = std::env::temp_dir().join(format!("redrive-partial-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (old, live) = (dir.join("a.bin.XXXXXXXX"), dir.join("b.bin.YYYYYYYY"));
    std::fs::write(&old, b"cut off").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&live, b"being written").unwrap_or_else(|e| panic!("{e}"));
    let touched = std::process::Command::new("touch")
        .args(["-d", "20 minutes ago"])
        .arg(&old)
        .status()
        .is_ok_and(|s| s.success());
    assert!(touched, "touch -d");
    remove_stale(&dir);
    assert!(!old.exists(), "the stale file is removed");
    assert!(live.exists(), "a file written to lately is kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gcs_is_reached_as_google_libraries_reach_it() {
    use crate::gcs_sign::GcsCredential;
    let reach = |specs: Vec<(String, StoreSpec)>, env: &[(&str, &str)]| {
        stores(specs, env)
            .gcs_object("gs://b/k")
            .map(|o| (o.endpoint, o.credential))
    };
    assert_eq!(
        reach(Vec::new(), &[]),
        Some((
            "https://storage.googleapis.com".to_owned(),
            GcsCredential::Default
        ))
    );
    // An emulator: its address, no credentials (a plain `host:port` is http).
    assert_eq!(
        reach(Vec::new(), &[("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")]),
        Some(("http://127.0.0.1:9023".to_owned(), GcsCredential::Anonymous))
    );
    // A key file is used wherever the requests go.
    let key = &[
        ("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9023/"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json"),
    ];
    assert_eq!(
        reach(Vec::new(), key),
        Some((
            "http://127.0.0.1:9023".to_owned(),
            GcsCredential::File("/keys/sa.json".to_owned())
        ))
    );
    // A [store] table's endpoint wins, and without a key file Google's chain is asked.
    let table = StoreSpec {
        endpoint: Some("https://gcs.example.com".to_owned()),
        ..StoreSpec::default()
    };
    assert_eq!(
        reach(
            vec![("gs://b".to_owned(), table)],
            &[("STORAGE_EMULATOR_HOST", "127.0.0.1:9023")]
        ),
        Some(("https://gcs.example.com".to_owned(), GcsCredential::Default))
    );
    assert!(stores(Vec::new(), &[]).gcs_object("s3://b/k").is_none());
}

#[test]
fn the_jobs_own_files_are_its_logs_and_its_state_with_what_sqlite_keeps_beside_it() {
    let stores = stores(vec![], &[]).with_own_files(
        PathBuf::from("/plans/.redrive/j-logs"),
        Some(Path::new("/plans/.redrive/j.db")),
    );
    for own in [
        "/plans/.redrive/j-logs/a.log",
        "/plans/.redrive/j-logs/.partial/x.partial",
        "/plans/.redrive/j.db",
        "/plans/.redrive/j.db-wal",
        "/plans/.redrive/j.db.lock",
        "/plans/.redrive/j.shard-1-of-4.db-shm",
    ] {
        assert!(stores.is_own(Path::new(own)), "{own}");
    }
    for theirs in [
        "/plans/j.db",
        "/plans/.redrive/other.db",
        "/plans/.redrive/j-logsx",
        "/plans/data/j.db",
    ] {
        assert!(!stores.is_own(Path::new(theirs)), "{theirs}");
    }
    assert!(!self::stores(vec![], &[]).is_own(Path::new("/plans/.redrive/j.db")));
}
