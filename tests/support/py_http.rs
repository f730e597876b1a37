//! `python3 -m http.server` on 127.0.0.1: a real server that ignores Range.

use super::procs;

pub struct PyHttp {
    child: std::process::Child,
    pub port: u16,
}

impl PyHttp {
    /// Serves `root`; returns once it accepts connections.
    pub fn start(root: &std::path::Path) -> PyHttp {
        let port = super::nginx::free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(root)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 must be installed");
        let mut server = PyHttp { child, port };
        let up = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if up.elapsed() > std::time::Duration::from_secs(60) {
                procs::terminate(&mut server.child);
                panic!("python http.server did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PyHttp {
    fn drop(&mut self) {
        procs::terminate(&mut self.child);
    }
}
