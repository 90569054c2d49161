//! `enqueue` to SQS (moto server started by `scripts/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common::{TestContext, runtime, s3_endpoint, s3_env, unique};

/// One SQS JSON-protocol call to moto (which does not check signatures).
fn sqs(action: &str, payload: serde_json::Value) -> serde_json::Value {
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{}/", s3_endpoint()))
            .header("content-type", "application/x-amz-json-1.0")
            .header("x-amz-target", format!("AmazonSQS.{action}"))
            // moto routes by the credential scope's service; it does not check the signature.
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(payload.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "{action}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    })
}

/// Creates the queue `name` on moto; its URL.
fn create_queue(name: &str) -> String {
    sqs("CreateQueue", serde_json::json!({"QueueName": name}))["QueueUrl"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn receive_all(queue_url: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let got = sqs(
            "ReceiveMessage",
            serde_json::json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10}),
        );
        let messages = got["Messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            break;
        }
        for message in messages {
            bodies.push(message["Body"].as_str().unwrap_or_default().to_owned());
            sqs(
                "DeleteMessage",
                serde_json::json!({"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"]}),
            );
        }
    }
    bodies.sort();
    bodies
}

#[test]
fn one_message_per_item_with_the_templated_body() {
    let name = unique("rd-sqs");
    let queue_url = create_queue(&name);
    let t = s3_env(TestContext::new());
    t.write(
        "keys.txt",
        "raw/2026-01-01/a.dmp\nraw/2026-01-01/b.dmp\nraw/2026-01-02/c \"quoted\".dmp\n",
    );
    t.plan(&format!(
        r#"
[job]
name = "sqs"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = '{{"key":"{{line}}","name":"{{line|basename}}"}}' }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let bodies = receive_all(&queue_url);
    assert_eq!(
        bodies,
        [
            r#"{"key":"raw/2026-01-01/a.dmp","name":"a.dmp"}"#,
            r#"{"key":"raw/2026-01-01/b.dmp","name":"b.dmp"}"#,
            r#"{"key":"raw/2026-01-02/c "quoted".dmp","name":"c "quoted".dmp"}"#,
        ]
    );
    // Recorded: a rerun sends nothing.
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert!(receive_all(&queue_url).is_empty());

    // base64, to a queue URL.
    let t = s3_env(TestContext::new());
    t.write("keys.txt", "x\n");
    t.plan(&format!(
        r#"
[job]
name = "sqs64"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = "hello {{line}}", base64 = true }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    assert_eq!(receive_all(&queue_url), ["aGVsbG8geA=="]);
}

/// To an SQS FIFO queue with `dedup_id`, a message sent again (as after a crash, here: the
/// state removed and the job run again) is recognised by SQS and delivered once; a key SQS
/// would refuse as an id (too long, spaces) is sent as its SHA-256, the same every time. A
/// body larger than an Azure queue takes (64 KiB) goes to SQS (1 MiB).
#[test]
fn fifo_messages_sent_again_are_delivered_once() {
    let name = format!("{}.fifo", unique("rd-fifo"));
    let queue_url = sqs(
        "CreateQueue",
        serde_json::json!({"QueueName": name, "Attributes": {"FifoQueue": "true"}}),
    )["QueueUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = s3_env(TestContext::new());
    let big = "x".repeat(100 * 1024);
    let mut keys: String = (0..24).map(|i| format!("k{i:02} with spaces\n")).collect();
    keys.push_str(&big);
    keys.push('\n');
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "fifo"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = "m-{{line}}", dedup_id = "{{line}}", group_id = "g" }}
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    std::fs::remove_file(t.path("state.db")).unwrap();
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    let bodies = receive_all(&queue_url);
    assert_eq!(bodies.len(), 25, "each message once");
    assert!(bodies.contains(&format!("m-{big}")));
    assert!(bodies.contains(&"m-k03 with spaces".to_owned()));
}

#[test]
fn a_missing_queue_fails_the_item_naming_it() {
    let t = s3_env(TestContext::new());
    t.write("keys.txt", "x\n");
    let name = unique("rd-nosuch");
    t.plan(&format!(
        r#"
[job]
name = "nosqs"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = "{{line}}" }}
[limits]
retries = 0
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed
            .stdout
            .contains(&format!("SQS GetQueueUrl for `sqs://{name}` answered 400")),
        "{}",
        failed.stdout
    );
    assert!(
        failed.stdout.contains("QueueDoesNotExist"),
        "{}",
        failed.stdout
    );
}

/// Messages go to SQS ten at a time (`SendMessageBatch`), and each item is done when its own
/// entry was accepted: through a proxy that makes SQS refuse one entry of one batch (a delay
/// SQS does not allow), the other 94 are sent once, the refused item fails alone naming SQS's
/// reason, and `--retry-failed` sends it alone.
#[test]
fn messages_go_in_batches_of_ten_and_a_refused_entry_fails_alone() {
    use std::sync::{Arc, Mutex};
    let name = unique("rd-sqsb");
    let queue_url = create_queue(&name);
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let poisoned = Arc::new(Mutex::new(false));
    let (seen, once) = (Arc::clone(&calls), Arc::clone(&poisoned));
    let proxy = crate::proxy::Proxy::start(s3_endpoint(), move |request| {
        let target = request
            .headers
            .get("x-amz-target")
            .cloned()
            .unwrap_or_default();
        seen.lock().unwrap().push(target.clone());
        if target == "AmazonSQS.SendMessageBatch" && !*once.lock().unwrap() {
            let mut payload: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let entries = payload["Entries"].as_array_mut().unwrap();
            if let Some(entry) = entries.iter_mut().find(|e| e["MessageBody"] == "m-42") {
                entry["DelaySeconds"] = serde_json::json!(1000);
                *once.lock().unwrap() = true;
                request.body = payload.to_string().into_bytes();
            }
        }
        crate::proxy::Action::Forward
    });
    let t = crate::common::s3_env_at(TestContext::new(), &proxy.address);
    let keys: String = (0..95).map(|i| format!("{i}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "sqsbatch"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = "m-{{line}}" }}
[limits]
items = 40
"#
    ));
    t.redrive(&["run", "plan.toml"]).expect_code(1);
    assert!(*poisoned.lock().unwrap(), "the proxy refused an entry");
    let batches = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.as_str() == "AmazonSQS.SendMessageBatch")
        .count();
    assert!(
        (10..=20).contains(&batches),
        "95 messages in {batches} SendMessageBatch calls"
    );
    assert!(
        !calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "AmazonSQS.SendMessage"),
        "no single sends"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        94
    );
    let failed = t.redrive(&["failed", "plan.toml"]).expect_code(0);
    assert!(
        failed.stdout.contains("42") && failed.stdout.contains("SQS refused the message"),
        "{}",
        failed.stdout
    );
    let first = receive_all(&queue_url);
    assert_eq!(first.len(), 94, "each accepted message once");
    assert!(!first.contains(&"m-42".to_owned()));

    t.redrive(&["run", "plan.toml", "--retry-failed"])
        .expect_code(0);
    assert_eq!(receive_all(&queue_url), ["m-42"]);
}

/// Every message on the queue, each received once (held invisible for the rest of the test),
/// counted by body.
fn count_all(queue_url: &str) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    loop {
        let got = sqs(
            "ReceiveMessage",
            serde_json::json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 3600}),
        );
        let messages = got["Messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            return counts;
        }
        for message in messages {
            let body = message["Body"].as_str().unwrap_or_default().to_owned();
            *counts.entry(body).or_default() += 1;
        }
    }
}

/// `enqueue` to SQS (batches of 10, 40 items in flight) killed at random instants: every item's
/// message is on the queue, and an item's message is there twice only if its batch was in
/// flight at a kill.
#[test]
fn an_sqs_enqueue_killed_at_random_instants_loses_no_message_and_repeats_only_what_was_in_flight() {
    const KILLS: usize = 4;
    const IN_FLIGHT: usize = 40;
    let name = unique("rd-sqsk");
    let queue_url = create_queue(&name);
    let t = s3_env(TestContext::new());
    // moto's SendMessageBatch takes longer the more messages the queue holds (36 ms at 200,
    // 300 ms at 1,000): a few hundred items keep the test quick.
    let n = 400;
    let keys: String = (0..n).map(|i| format!("k{i:05}\n")).collect();
    t.write("keys.txt", keys);
    t.plan(&format!(
        r#"
[job]
name = "killsqs"
state = "state.db"
[source]
lines = "keys.txt"
[[step]]
enqueue = {{ queue = "sqs://{name}", body = "m-{{line}}" }}
[limits]
items = {IN_FLIGHT}
"#
    ));
    let (kills, first) = crate::crash::kill_loop(&t, KILLS);
    t.redrive(&["run", "plan.toml"]).expect_code(0);
    crate::crash::assert_each_once_repeats_bounded(
        "messages sent twice",
        &count_all(&queue_url),
        n,
        (kills, first),
        IN_FLIGHT,
    );
    assert_eq!(
        t.count("SELECT count(*) FROM items WHERE status = 'done'"),
        n as i64
    );
}
