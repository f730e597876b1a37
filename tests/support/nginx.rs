//! A real nginx on 127.0.0.1 serving a directory, over HTTP, HTTPS (private CA) and
//! HTTPS that requires a client certificate; plus the PKI made with openssl. On the HTTP
//! port `/private/` answers 403 and `/auth/` needs basic auth ([`BASIC_AUTH`]).
//!
//! Redirects (the query string is kept): on the HTTP port `/same/X` → `/X` (a relative
//! `Location`), `/cross/X` → the `alt` port's `/X` (another origin: a second plain HTTP
//! server on the same directory), `/up/X` → the HTTPS port's `/X`, `/loop/X` → itself;
//! on the HTTPS port `/to-http/X` → the HTTP port's `/X`. Every request is also logged to
//! [`Nginx::header_log`] with its port and the `X-Fleet-Token` and `Authorization` it carried.

use super::procs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts nginx (a master and one worker, in the foreground) with its files in `work`
/// and `servers` inside its `http` block; returns once it accepts on every port in
/// `ports`. Stop it with [`procs::terminate`]: the master stops its worker, and both are
/// waited for.
pub fn launch(work: &Path, servers: &str, ports: &[u16]) -> Child {
    std::fs::create_dir_all(work.join("logs")).unwrap();
    let conf = format!(
        "user root; worker_processes 1; master_process on; daemon off; pid {w}/nginx.pid;\n\
         error_log {w}/logs/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log {w}/logs/access.log; client_body_temp_path {w}/body; proxy_temp_path {w}/proxy;\n\
           fastcgi_temp_path {w}/fcgi; uwsgi_temp_path {w}/uwsgi; scgi_temp_path {w}/scgi;\n\
           default_type application/octet-stream;\n\
         {servers}\n\
         }}\n",
        w = work.display(),
    );
    std::fs::write(work.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new("nginx")
        .arg("-c")
        .arg(work.join("nginx.conf"))
        .arg("-p")
        .arg(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx must be installed");
    let deadline = Instant::now() + Duration::from_secs(60);
    for &port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                procs::terminate(&mut child);
                panic!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(work.join("logs/error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CA, server certificate for 127.0.0.1, client certificate, a second unrelated CA
/// (`otherca.pem`) and a client certificate it signed (`otherclient.pem`).
pub fn make_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ca in ["ca", "otherca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "30",
                "-subj",
                &format!("/CN=rota test {ca}"),
            ],
        );
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, ext, ca) in [
        ("server", "server.ext", "ca"),
        ("client", "client.ext", "ca"),
        // A client certificate from a CA the server does not trust.
        ("otherclient", "client.ext", "otherca"),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "30",
                "-extfile",
                ext,
            ],
        );
    }
}

/// `Authorization` header that opens `/auth/` (user "device", password "s3cret").
pub const BASIC_AUTH: &str = "Authorization: Basic ZGV2aWNlOnMzY3JldA==";

pub struct Nginx {
    child: Child,
    work: PathBuf,
    pub http: u16,
    pub https: u16,
    pub mtls: u16,
    /// A second plain HTTP server on the same root: another origin for `/cross/`.
    pub alt: u16,
}

impl Nginx {
    /// Serves `root`; `pki` must hold what [`make_pki`] makes.
    pub fn start(root: &Path, pki: &Path, work: &Path) -> Nginx {
        std::fs::create_dir_all(work.join("logs")).unwrap();
        let (http, https, mtls, alt) = (free_port(), free_port(), free_port(), free_port());
        let p = |n: &str| pki.join(n).display().to_string();
        let servers = format!(
            "log_format hdrs '$server_port $request_method $request_uri token=$http_x_fleet_token auth=$http_authorization';\n\
               access_log {w}/logs/headers.log hdrs;\n\
               log_format ranges '$server_port $request_uri $http_range';\n\
               access_log {w}/logs/ranges.log ranges;\n\
               server {{ listen 127.0.0.1:{http}; root {r};\n\
                 location /private/ {{ deny all; }}\n\
                 location /auth/ {{ auth_basic \"rota\"; auth_basic_user_file {w}/htpasswd; }}\n\
                 location /same/ {{ absolute_redirect off; rewrite ^/same/(.*)$ /$1 redirect; }}\n\
                 location /cross/ {{ rewrite ^/cross/(.*)$ http://127.0.0.1:{alt}/$1 redirect; }}\n\
                 location /up/ {{ rewrite ^/up/(.*)$ https://127.0.0.1:{https}/$1 redirect; }}\n\
                 location /loop/ {{ rewrite ^(.*)$ $1 redirect; }} }}\n\
               server {{ listen 127.0.0.1:{alt}; root {r}; }}\n\
               server {{ listen 127.0.0.1:{https} ssl; ssl_certificate {sc}; ssl_certificate_key {sk}; root {r};\n\
                 location /to-http/ {{ rewrite ^/to-http/(.*)$ http://127.0.0.1:{http}/$1 redirect; }} }}\n\
               server {{ listen 127.0.0.1:{mtls} ssl; ssl_certificate {sc}; ssl_certificate_key {sk};\n\
                 ssl_client_certificate {ca}; ssl_verify_client on; root {r}; }}",
            w = work.display(),
            r = root.display(),
            sc = p("server.pem"),
            sk = p("server.key"),
            ca = p("ca.pem"),
        );
        // `/auth/` needs user "device", password "s3cret" (HTTP basic auth).
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", "s3cret"])
            .output()
            .expect("openssl must be installed");
        assert!(hash.status.success());
        std::fs::write(
            work.join("htpasswd"),
            format!("device:{}", String::from_utf8_lossy(&hash.stdout)),
        )
        .unwrap();
        let child = launch(work, &servers, &[http, https, mtls, alt]);
        Nginx {
            child,
            work: work.to_owned(),
            http,
            https,
            mtls,
            alt,
        }
    }

    /// The requests served so far: `PORT METHOD URI token=X-Fleet-Token auth=Authorization`
    /// (`-` for a header that was not sent).
    pub fn header_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.join("logs/headers.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `<port> <uri> <Range header>` of every request, in the order nginx finished them.
    pub fn range_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.work.join("logs/ranges.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines of [`header_log`](Self::header_log) for requests to `port`.
    pub fn requests_to(&self, port: u16) -> Vec<String> {
        let prefix = format!("{port} ");
        self.header_log()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }

    /// [`Nginx::requests_to`] once `enough` says so (or after 30 s): nginx writes a
    /// request's line after the answer went out, so a client can be done before its line
    /// is there. Returns the lines either way; the caller asserts.
    pub fn requests_to_when(&self, port: u16, enough: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.requests_to(port);
            if enough(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// At least `n` lines for `port` (see [`Nginx::requests_to_when`]).
    pub fn requests_to_at_least(&self, port: u16, n: usize) -> Vec<String> {
        self.requests_to_when(port, |l| l.len() >= n)
    }

    pub fn url(&self, port: u16, tls: bool, name: &str) -> String {
        format!(
            "{}://127.0.0.1:{port}/{name}",
            if tls { "https" } else { "http" }
        )
    }
}

impl Nginx {
    /// The master's process id (its worker is its child).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master (nginx's fast shutdown); waits for it and its worker.
    fn drop(&mut self) {
        procs::terminate(&mut self.child);
    }
}

pub fn pki_path(dir: &Path) -> PathBuf {
    dir.join("pki")
}
