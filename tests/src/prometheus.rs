//! A real Prometheus server (Debian's `prometheus`) scraping processes of a test, and its
//! HTTP query API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{Proc, free_port, wait_for};

/// Prometheus scraping `targets` (job name, `host:port` list) every second.
pub struct Prometheus {
    pub proc: Proc,
}

impl Prometheus {
    pub fn start(dir: &Path, targets: &[(&str, Vec<String>)]) -> Self {
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, hosts) in targets {
            let list: Vec<String> = hosts.iter().map(|h| format!("'{h}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write prometheus.yml");
        let port = free_port();
        let proc = Proc::spawn(
            "prometheus",
            port,
            dir.join("prometheus.log"),
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("prometheus-data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
        );
        wait_for("prometheus", Duration::from_secs(30), || proc.listening());
        Self { proc }
    }

    /// The result of an instant query: the `result` array of Prometheus' answer.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let body = http_get(self.proc.port, &path);
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered {body}: {e}"));
        assert_eq!(answer["status"], "success", "{answer:#}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A query's samples as (value of `label`, number).
    pub fn values_by(&self, promql: &str, label: &str) -> Vec<(String, f64)> {
        let mut values: Vec<(String, f64)> = self
            .query(promql)
            .iter()
            .map(|r| {
                let key = r["metric"][label].as_str().unwrap_or_default().to_string();
                let value = r["value"][1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                (key, value)
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    }
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
pub fn http_get(port: u16, path: &str) -> String {
    http_get_with(port, path, &[]).1
}

/// [`http_get`] with extra header lines (`Authorization: Bearer ...`); returns the status
/// code and the body.
pub fn http_get_with(port: u16, path: &str, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status.unwrap_or(0), body.to_string())
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
