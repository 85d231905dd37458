//! The cost of TLS certificate reloading: the periodic check when nothing
//! changed (re-read and compare the files), and a reload that builds a new
//! configuration (re-read, parse, check the key against the certificate).
//! Certificates: ECDSA P-256 from rcgen, a CA and a server certificate.

#![allow(clippy::unwrap_used, missing_docs)]

use clew_runtime::tls::testing::Pki;
use clew_runtime::tls::{ServerTls, ServerTlsFiles, TlsVersion};
use criterion::{Criterion, criterion_group, criterion_main};

fn reload(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "bench");
    let (cert, key) = pki.server("srv", &["localhost", "127.0.0.1"]);
    let files = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: Some(pki.ca.clone()),
        min_version: TlsVersion::V1_2,
    };
    let tls = ServerTls::load(files.clone(), &[b"h2"]).unwrap();
    c.bench_function("tls check, files unchanged", |b| {
        b.iter(|| assert!(!tls.reload().unwrap()))
    });
    // Two certificates' contents, swapped in turn: every reload changes.
    let a = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    pki.server("srv", &["localhost", "127.0.0.1"]);
    let b2 = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let mut flip = false;
    c.bench_function(
        "tls reload, new certificate (includes writing the files)",
        |b| {
            b.iter(|| {
                let (c_pem, k_pem) = if flip { &a } else { &b2 };
                flip = !flip;
                std::fs::write(&cert, c_pem).unwrap();
                std::fs::write(&key, k_pem).unwrap();
                assert!(tls.reload().unwrap());
            })
        },
    );
    c.bench_function("tls load (read, parse, build; mTLS)", |b| {
        b.iter(|| ServerTls::load(files.clone(), &[b"h2"]).unwrap())
    });
}

criterion_group!(benches, reload);
criterion_main!(benches);
