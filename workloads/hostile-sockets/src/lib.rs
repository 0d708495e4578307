//! A workload that tries to open a TCP socket. Because it imports `wasi:sockets`, which the
//! Mesh world does not offer, the executor must reject it before it runs.

use mesh_guest::{JobError, Metadata, Workload};
use wasi::sockets::network::IpAddressFamily;
use wasi::sockets::tcp_create_socket::create_tcp_socket;

struct Sockets;

impl Workload for Sockets {
    fn metadata() -> Metadata {
        Metadata::new("hostile-sockets", env!("CARGO_PKG_VERSION"))
    }

    fn run(_input: Vec<u8>) -> Result<Vec<u8>, JobError> {
        match create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(_) => Ok(b"opened a socket".to_vec()),
            Err(e) => Err(JobError::internal(format!("socket: {e:?}"))),
        }
    }
}

mesh_guest::export_workload!(Sockets);
