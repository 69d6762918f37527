//! Image configs: deterministic bytes, Docker fields, and unknown fields surviving a round trip.

mod common;

use std::collections::BTreeSet;
use std::fs;

use kiln_oci::image::{self, ContainerConfig, HealthConfig, History};
use kiln_oci::{Digest, ImageConfig};
use serde_json::{json, Value};

fn docker_style_config() -> ImageConfig {
    let mut c = ImageConfig::new("linux", "arm64");
    c.variant = Some("v8".into());
    c.created = Some("2024-01-01T00:00:00Z".into());
    *c.config_mut() = ContainerConfig {
        user: Some("app".into()),
        env: Some(vec!["PATH=/bin".into(), "LANG=C.UTF-8".into()]),
        entrypoint: Some(vec![]),
        cmd: None,
        working_dir: Some("/srv".into()),
        labels: Some(
            (0..30)
                .map(|i| (format!("label.{i}"), format!("{i}")))
                .collect(),
        ),
        exposed_ports: Some(
            (0..30)
                .map(|i| (format!("{}/udp", 9000 + i), Default::default()))
                .collect(),
        ),
        volumes: Some([("/var/lib/data".to_owned(), Default::default())].into()),
        stop_signal: Some("SIGQUIT".into()),
        args_escaped: true,
        healthcheck: Some(HealthConfig {
            test: Some(vec!["CMD".into(), "/healthz".into()]),
            interval: Some(10_000_000_000),
            timeout: Some(3_000_000_000),
            start_period: Some(60_000_000_000),
            start_interval: Some(2_000_000_000),
            retries: Some(5),
        }),
        on_build: Some(vec!["COPY . /src".into(), "RUN make".into()]),
        shell: Some(vec![
            "/bin/bash".into(),
            "-eo".into(),
            "pipefail".into(),
            "-c".into(),
        ]),
        ..ContainerConfig::default()
    };
    for i in 0..3 {
        c.push_layer(
            Digest::of(format!("layer {i}").as_bytes()),
            History {
                created: Some("2024-01-01T00:00:00Z".into()),
                created_by: Some(format!("RUN step {i}")),
                comment: Some("buildkit.dockerfile.v0".into()),
                ..History::default()
            },
        );
    }
    c.push_empty_layer(History {
        created_by: Some("ENTRYPOINT []".into()),
        ..History::default()
    });
    c
}

#[test]
fn same_config_ten_times_gives_one_byte_string() {
    let distinct: BTreeSet<Vec<u8>> = (0..10)
        .map(|_| docker_style_config().to_vec().unwrap())
        .collect();
    assert_eq!(distinct.len(), 1);
}

#[test]
fn our_docker_config_round_trips_byte_for_byte() {
    let bytes = docker_style_config().to_vec().unwrap();
    let parsed = image::parse_config(bytes.clone()).unwrap();
    assert_eq!(parsed.value, docker_style_config());
    assert_eq!(parsed.value.to_vec().unwrap(), bytes);
    let text = String::from_utf8(bytes).unwrap();
    for needle in [
        r#""Healthcheck":{"Interval":10000000000,"Retries":5,"StartInterval":2000000000,"StartPeriod":60000000000,"Test":["CMD","/healthz"],"Timeout":3000000000}"#,
        r#""OnBuild":["COPY . /src","RUN make"]"#,
        r#""Shell":["/bin/bash","-eo","pipefail","-c"]"#,
        r#""ArgsEscaped":true"#,
        r#""Entrypoint":[]"#,
        r#""empty_layer":true"#,
        r#""9000/udp":{}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
    assert!(
        !text.contains("\"Cmd\""),
        "unset Cmd must be omitted: {text}"
    );
}

#[test]
fn unknown_fields_survive_at_both_levels() {
    let mut doc = serde_json::to_value(docker_style_config()).unwrap();
    doc["docker_version"] = json!("20.10.24");
    doc["container_config"] =
        json!({"Hostname": "abc", "Cmd": ["/bin/sh", "-c", "#(nop) ", "CMD [\"sh\"]"]});
    doc["config"]["Hostname"] = json!("");
    doc["config"]["AttachStdout"] = json!(false);
    doc["config"]["Image"] =
        json!("sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270");
    doc["config"]["Healthcheck"]["Future"] = json!(1);
    let bytes = serde_json::to_vec(&doc).unwrap();
    let parsed = ImageConfig::from_slice(&bytes).unwrap();
    assert_eq!(parsed.extra["docker_version"], json!("20.10.24"));
    assert_eq!(
        parsed.config.as_ref().unwrap().extra["AttachStdout"],
        json!(false)
    );
    let back: Value = serde_json::from_slice(&parsed.to_vec().unwrap()).unwrap();
    // Everything survives except what HealthConfig chooses not to model.
    doc["config"]["Healthcheck"]
        .as_object_mut()
        .unwrap()
        .remove("Future");
    assert_eq!(back, doc);
}

#[test]
fn a_real_docker_config_parses_and_keeps_its_fields() {
    let path = common::corpus_dir()
        .join("oci-image-spec-schema/test-vectors/backwards-compatibility-config.json");
    let v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    let mut n = 0;
    for case in v["cases"].as_array().unwrap() {
        let text = case["document"].as_str().unwrap();
        let parsed = image::parse_config(text.as_bytes().to_vec()).unwrap();
        // The digest is over the document as given, never a re-serialization.
        assert_eq!(parsed.digest.as_str(), case["digest"].as_str().unwrap());
        let original: Value = serde_json::from_str(text).unwrap();
        let again: Value = serde_json::from_slice(&parsed.value.to_vec().unwrap()).unwrap();
        assert_eq!(strip_nulls(again), strip_nulls(original));
        n += 1;
    }
    assert!(n >= 1);
}

/// Docker writes `"Cmd": null`; we read it as unset and omit it, which means the same.
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}
