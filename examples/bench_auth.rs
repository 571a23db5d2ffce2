//! What credentials cost: renewals per second on one real node under wrk, (1) with no
//! credentials configured (loopback is admin: the figure before tokens existed), (2) with a
//! `register` token over plain HTTP, each renewal for the client's own address (so the token
//! lookup and the registration policy run on every request), (3) the same over TLS. Loopback
//! is nobody's own address, so (2) and (3) connect to this machine's first non-loopback IPv4
//! address (`hostname -I`), which is then the client's source address.
//!
//! Run: `apt-get install -y wrk && cargo build --release && cargo run --release --example bench_auth`

#[path = "common/mod.rs"]
mod common;
use common::free_port;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-register-token-0123456789abcdef";

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path, config: &str) -> (Node, u16) {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/bender");
    assert!(
        binary.exists(),
        "build the release binary first: cargo build --release"
    );
    let path = dir.join("bender.toml");
    std::fs::write(&path, config).unwrap();
    let (api, gossip) = (free_port(), free_port());
    let child = Command::new(binary)
        .args(["agent", "--config"])
        .arg(&path)
        .args(["--api-listen", &format!("0.0.0.0:{api}")])
        .args(["--gossip-listen", &format!("127.0.0.1:{gossip}")])
        .env("BENDER_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    (Node(child), api)
}

/// Runs wrk for 10 s, POSTing renewals of 1,000 registrations of `host`; returns its summary.
fn wrk(url: &str, host: &str, token: Option<&str>) -> String {
    let script = std::env::temp_dir().join(format!("bender-bench-auth-{host}.lua"));
    std::fs::write(
        &script,
        format!(
            r#"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/registrations/bench/1/{host}/" .. (counter % 1000 + 1))
end
"#
        ),
    )
    .unwrap();
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", "-d10s", "-s"]).arg(&script);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .unwrap_or("Requests/sec: ?")
        .trim()
        .to_string();
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(str::trim)
        .unwrap_or("no errors")
        .to_string();
    format!("{rps}; {errors}")
}

/// This machine's first non-loopback IPv4 address.
fn own_address() -> Option<String> {
    let out = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_link_local())
        .map(|a| a.to_string())
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("bench_auth: needs wrk (apt-get install -y wrk)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bender-bench-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("register.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tokens = format!(
        "[[auth.token]]\nname = \"apps\"\nscope = \"register\"\nfile = \"{}\"\n",
        token_file.display()
    );

    // Certificates for the TLS run, made here (rcgen).
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut names = vec!["127.0.0.1".to_string()];
    names.extend(own_address());
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (cert_path, key_path) = (dir.join("api.crt"), dir.join("api.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls = format!(
        "[api.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );

    println!(
        "bender credential benchmarks ({} cores; wrk -t2 -c64 -d10s, 1,000 registrations)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    {
        let (_node, port) = start(&dir, "");
        let r = wrk(&format!("http://127.0.0.1:{port}"), "10.0.0.1", None);
        println!("no credentials configured (loopback), plain HTTP: {r}");
    }
    let Some(own) = own_address() else {
        println!("bench_auth: this machine has no non-loopback IPv4 address for the token runs");
        return;
    };
    {
        let (_node, port) = start(&dir, &tokens);
        let r = wrk(&format!("http://{own}:{port}"), &own, Some(TOKEN));
        println!("register token, own address, plain HTTP:         {r}");
    }
    {
        let (_node, port) = start(&dir, &format!("{tls}\n{tokens}"));
        let r = wrk(&format!("https://{own}:{port}"), &own, Some(TOKEN));
        println!("register token, own address, TLS (keep-alive):   {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
