//! The httpd image: a static-file HTTP/1.1 server. The site (the
//! configuration's `files` folder) is packed into the image at build time
//! and unpacked into the image's file system at boot; every request is
//! answered from there through `vfs` (and `ramfs`), in whatever
//! compartments the configuration gives them.
//!
//! GET and HEAD, keep-alive (HTTP/1.1 by default, HTTP/1.0 on request),
//! content types by extension, `/dir/` → `/dir/index.html`; 404 for a
//! missing file, 405 for other methods, 400 (and close) for a malformed
//! request or an HTTP/1.1 request without exactly one `Host`.
//!
//! A request head must arrive within `--header-timeout` (20 s), an idle
//! keep-alive connection is closed after `--idle-timeout` (75 s), and when
//! connections run short the ones that have kept the server waiting for a
//! second are closed first, so slow clients (slowloris) cannot keep others out.
//!
//! `flexos-httpd [--port P] [--max-connections N] [--buffer-size BYTES] [--recv-size BYTES]
//! [--header-timeout S] [--idle-timeout S]` (defaults 80, 1024, 64 KiB, 64 KiB, 20, 75).
//! It prints `listening: HOST:PORT`.
#![forbid(unsafe_code)]

mod http;

use flexos_gate::abi::{Errno, FileKind, open_flags};
use flexos_gate::{SharedBuf, gate};
use flexos_netapp::{Context, Flow, Protocol};
use http::Parsed;

flexos_gate::link_pad!();

/// Every allocation is served from the running compartment's heap.
#[global_allocator]
static HEAP: flexos_alloc::CompartmentAllocator = flexos_alloc::CompartmentAllocator;

flexos_gate::component!(HTTPD);

include!(concat!(env!("OUT_DIR"), "/packed_files.rs"));

fn main() {
    flexos_netapp::boot();
    let defaults = flexos_netapp::Options {
        port: 80,
        recv_size: 64 * 1024,
        max_connections: 1024,
        buffer_size: 64 * 1024,
        output_limit: flexos_netapp::DEFAULT_OUTPUT_LIMIT,
        // Apache's mod_reqtimeout and nginx: a request head gets 20 s, an idle
        // keep-alive connection 75 s; slow clients go first when connections run short.
        timeouts: flexos_netapp::Timeouts { request_ms: 20_000, idle_ms: 75_000, evict_when_busy: true },
        gate_stats: false,
    };
    let options = flexos_netapp::options("flexos-httpd", defaults);
    for (path, data) in PACKED_FILES {
        if let Err(e) =
            flexos_netapp::install_file::<{ FLEXOS_COMPONENT.compartment }, _>(flexos_gate::me!(), path, data)
        {
            eprintln!("flexos-httpd: cannot unpack {path} into the image's file system: errno {}", e.0);
            std::process::exit(70);
        }
    }
    let server = || Httpd { file: SharedBuf::zeroed(0) };
    flexos_netapp::run::<{ FLEXOS_COMPONENT.compartment }, _, _>(flexos_gate::me!(), "flexos-httpd", options, server)
}

/// The server; `file` is the shared buffer that file contents are read into.
struct Httpd {
    file: SharedBuf,
}

/// A connection: body bytes of the last request still to skip.
#[derive(Default)]
struct Conn {
    skip_body: usize,
}

impl Httpd {
    /// Reads the file at `path` (`index.html` for a directory) into
    /// `self.file`; returns its length and content type.
    fn read_file(&mut self, path: &[u8]) -> Result<(usize, &'static str), Errno> {
        let mut path = path.to_vec();
        if path.ends_with(b"/") {
            path.extend_from_slice(b"index.html");
        }
        let mut fd = open(&path)?;
        let mut stat = gate!(flexos_vfs::fstat(fd));
        if matches!(stat, Ok(s) if s.kind == FileKind::Dir) {
            let _ = gate!(flexos_vfs::close(fd));
            path.extend_from_slice(b"/index.html");
            fd = open(&path)?;
            stat = gate!(flexos_vfs::fstat(fd));
        }
        let result = stat.and_then(|s| {
            let size = s.size as usize;
            if self.file.len() < size {
                self.file = SharedBuf::zeroed(size.next_power_of_two());
            }
            let mut done = 0;
            while done < size {
                let buf = self.file.shared_mut().slice_mut(done..size);
                match gate!(flexos_vfs::pread(fd, buf, done as u64))? {
                    0 => return Err(Errno::EIO),
                    n => done += n,
                }
            }
            Ok((size, http::content_type(&path)))
        });
        let _ = gate!(flexos_vfs::close(fd));
        result
    }

    fn respond(&mut self, req: &http::Request, out: &mut Vec<u8>) {
        let head_only = req.method == "HEAD";
        if req.method != "GET" && !head_only {
            return http::error(out, 405, "Method Not Allowed", req.keep_alive, true);
        }
        match self.read_file(&req.path) {
            Ok((len, content_type)) => {
                http::head(out, 200, "OK", content_type, len, req.keep_alive);
                if !head_only {
                    let start = out.len();
                    out.resize(start + len, 0);
                    self.file.read_at(0, &mut out[start..]);
                }
            }
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ENAMETOOLONG) => {
                http::error(out, 404, "Not Found", req.keep_alive, !head_only)
            }
            Err(_) => http::error(out, 500, "Internal Server Error", req.keep_alive, !head_only),
        }
    }
}

fn open(path: &[u8]) -> Result<i32, Errno> {
    let p = SharedBuf::from_slice(path);
    gate!(flexos_vfs::open(p.shared(), open_flags::O_RDONLY, 0))
}

impl Protocol for Httpd {
    type Conn = Conn;

    fn input(&mut self, conn: &mut Conn, input: &[u8], out: &mut Vec<u8>, _: &Context) -> Flow {
        let mut flow = Flow::default();
        loop {
            if conn.skip_body > 0 {
                let n = conn.skip_body.min(input.len() - flow.consumed);
                conn.skip_body -= n;
                flow.consumed += n;
                if conn.skip_body > 0 {
                    return flow;
                }
            }
            match http::parse(&input[flow.consumed..]) {
                Parsed::Complete(req, n) => {
                    flow.consumed += n;
                    conn.skip_body = req.body_len;
                    self.respond(&req, out);
                    if !req.keep_alive {
                        flow.close = true;
                        return flow;
                    }
                }
                Parsed::Partial => return flow,
                Parsed::Bad(_) => {
                    http::error(out, 400, "Bad Request", false, true);
                    flow.close = true;
                    return flow;
                }
            }
        }
    }
}
