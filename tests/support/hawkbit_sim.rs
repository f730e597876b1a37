//! Runs `hawkbit_sim.py` (a hawkBit DDI server written from the published API) on
//! 127.0.0.1 and drives it: create deployments, cancel them, open maintenance windows,
//! inject failures, and read back the feedback the device sent.

use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CONTROLLER: &str = "gw-test-1";
pub const TOKEN: &str = "s3cr3t-target-token";

pub struct HawkbitSim {
    child: Child,
    pub port: u16,
    http: reqwest::blocking::Client,
}

impl HawkbitSim {
    /// A simulator for tenant `DEFAULT`, controller [`CONTROLLER`], that accepts only
    /// `Authorization: TargetToken` [`TOKEN`].
    pub fn start() -> HawkbitSim {
        rota::source::tls::install_ring_provider();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/hawkbit_sim.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([
                "--controller",
                CONTROLLER,
                "--auth",
                &format!("TargetToken {TOKEN}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("hawkbit_sim did not start: {line:?}"));
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .build()
            .unwrap();
        HawkbitSim { child, port, http }
    }

    /// The `[update] poll` value.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `[update]` for this simulator.
    pub fn config(&self, token: &str) -> String {
        format!(
            "[update]\nkind = \"hawkbit\"\npoll = \"{}\"\ninterval = \"1s\"\ncontroller-id = \"{CONTROLLER}\"\ntarget-token = \"{token}\"\n",
            self.url()
        )
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.url()))
            .body(body.to_string())
            .send()
            .unwrap();
        assert!(r.status().is_success(), "sim {path}: {}", r.status());
        serde_json::from_str(&r.text().unwrap()).unwrap()
    }

    /// A new action for the bundle at `file`; returns its id.
    pub fn deploy(
        &self,
        file: &Path,
        version: &str,
        download: &str,
        update: &str,
        window: Option<&str>,
    ) -> String {
        let mut b =
            json!({"file": file, "version": version, "download": download, "update": update});
        if let Some(w) = window {
            b["window"] = json!(w);
        }
        self.post("/_sim/actions", b)["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Posts `body` as a client's feedback on action `id` (with the accepted token);
    /// returns the HTTP status.
    #[allow(dead_code)]
    pub fn client_feedback(&self, id: &str, body: Value) -> u16 {
        self.http
            .post(format!(
                "{}/DEFAULT/controller/v1/{CONTROLLER}/deploymentBase/{id}/feedback",
                self.url()
            ))
            .header("Authorization", format!("TargetToken {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn change(&self, id: &str, body: Value) {
        self.post(&format!("/_sim/actions/{id}"), body);
    }

    pub fn cancel(&self, id: &str) {
        self.change(id, json!({"cancel": true}));
    }

    pub fn configure(&self, body: Value) {
        self.post("/_sim/config", body);
    }

    pub fn state(&self) -> Value {
        let r = self
            .http
            .get(format!("{}/_sim/state", self.url()))
            .send()
            .unwrap();
        serde_json::from_str(&r.text().unwrap()).unwrap()
    }

    pub fn action(&self, id: &str) -> Value {
        self.state()["actions"][id].clone()
    }

    /// How many requests of `kind` (base, deploymentBase, artifact, ...) arrived.
    pub fn count(&self, kind: &str) -> u64 {
        self.state()["counts"][kind].as_u64().unwrap_or(0)
    }

    /// Waits until `n` more requests of `kind` than `since` arrived (e.g. polls of the
    /// base resource): something that must not happen between polls is then known not to
    /// have happened in that many polls, however slow the machine is.
    pub fn wait_count(&self, kind: &str, since: u64, n: u64, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.count(kind);
            if now >= since + n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} more {kind} requests within {secs} s",
                now - since.min(now)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Artifact bytes the simulator has sent so far.
    pub fn artifact_bytes(&self) -> u64 {
        self.state()["artifact_bytes"].as_u64().unwrap_or(0)
    }

    /// Waits until `pred` holds for the action; returns it.
    pub fn wait_action(
        &self,
        id: &str,
        secs: u64,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let a = self.action(id);
            if pred(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for action {id}: {what}; it is {a:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether any feedback entry has this execution and a detail containing `text`.
pub fn has_feedback(entries: &Value, execution: &str, finished: &str, text: &str) -> bool {
    entries.as_array().is_some_and(|v| {
        v.iter().any(|f| {
            f["execution"] == execution
                && f["finished"] == finished
                && f["details"].as_array().is_some_and(|d| {
                    d.iter()
                        .any(|x| x.as_str().is_some_and(|s| s.contains(text)))
                })
        })
    })
}

impl HawkbitSim {
    /// The simulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HawkbitSim {
    fn drop(&mut self) {
        super::procs::terminate(&mut self.child);
    }
}
