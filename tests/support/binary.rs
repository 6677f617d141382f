//! Running the built `answerfeed` binary against a temp data dir and config file.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A temp dir holding a data dir and a config file, and a free loopback port for the ops
/// endpoint (so that tests running in parallel never share one).
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub config: PathBuf,
    pub ops_port: u16,
}

impl Env {
    /// A new environment; write its config with [`Env::write_config`].
    pub fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        let config = tmp.path().join("answerfeed.toml");
        Env {
            tmp,
            data,
            config,
            ops_port: free_port(),
        }
    }

    /// Writes the config file; an `[ops]` section with this environment's port is added when the
    /// text has none.
    pub fn write_config(&self, text: &str) {
        let mut text = text.to_string();
        if !text.contains("[ops]") {
            text.push_str(&format!(
                "\n[ops]\nlisten = \"127.0.0.1:{}\"\n",
                self.ops_port
            ));
        }
        std::fs::write(&self.config, text).expect("config written");
    }
}

/// The binary with this environment's config and data dir, and none of the caller's settings.
pub fn bin(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_answerfeed"));
    cmd.env_remove("ANSWERFEED_DATA_DIR")
        .env_remove("ANSWERFEED_CONFIG")
        .env_remove("ANSWERFEED_SMTP_PASSWORD")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&env.config)
        .arg("--data-dir")
        .arg(&env.data)
        .stdin(Stdio::null());
    cmd
}

pub fn run(env: &Env, args: &[&str]) -> Output {
    bin(env).args(args).output().expect("the binary runs")
}

/// The output of a command that must succeed, with everything it printed when it did not.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}
