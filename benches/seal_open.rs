#![allow(missing_docs)]
//! Field seal/open against the bare primitives, SSE decryption against plain SSE parsing, and
//! request rewriting.
//!
//! Run: `cargo bench --bench seal_open --features libsecp256k1,aws-lc` (or without the features
//! for the pure-Rust build). The "bare" floor calls the pure-Rust primitives directly (ephemeral
//! key through k256's precomputed generator tables or x25519-dalek, ECDH, HKDF-SHA256,
//! AES-256-GCM from aes-gcm) and produces the same wire form (hex of `ephemeral ‖ nonce ‖ ct ‖
//! tag`, with the same `const-hex` codec). Beside it, in the same group and the same process,
//! the crate's seal/open on each compiled backend (`rustcrypto`, `libsecp256k1`, `aws-lc`: that
//! library for the primitives it has, pure Rust for the rest) and `fastest` (what `seal`/`open`
//! use: the fastest compiled library per primitive). `ours-rustcrypto / bare` is the crate's own
//! overhead; `ours-<backend> / bare` is the speed-up a feature buys. The seal/open groups time
//! the bench thread's CPU time, not wall time (see `cpu_timed`).
//! `python3 benches/ratios.py` prints those ratios from `target/criterion`.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hkdf::Hkdf;
use k256::elliptic_curve::ops::MulByGenerator;
use k256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};
use serde_json::json;
use sha2::Sha256;
use std::hint::black_box;
use tower_aci::__private::SseDecoder;
use tower_aci::protocol::E2eeKey;
use tower_aci::protocol::StreamDecryptor;
use tower_aci::protocol::{
    Backend, PublicKey, SecretKey, Suite,
    kat::{self, open, seal},
};
use tower_aci::protocol::{EncryptOptions, Endpoint, ExchangeContext, encrypt_request};

const SIZES: [usize; 3] = [16, 1024, 64 * 1024];

fn hkdf(info: &[u8], shared: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 32];
    Hkdf::<Sha256>::new(None, shared).expand(info, &mut k).unwrap();
    k
}

/// The floor: primitives called directly, same wire form.
fn bare_seal(suite: Suite, recipient_hex: &str, pt: &[u8], aad: &[u8]) -> String {
    let (eph_pub, key): (Vec<u8>, [u8; 32]) = match suite {
        Suite::Secp256k1 => {
            let recipient = k256::PublicKey::from_sec1_bytes(&const_hex::decode(recipient_hex).unwrap()).unwrap();
            let eph = k256::NonZeroScalar::random(&mut OsRng);
            let eph_pub = k256::ProjectivePoint::mul_by_generator(eph.as_ref()).to_affine().to_encoded_point(false);
            let shared = k256::ecdh::diffie_hellman(eph, recipient.as_affine());
            (eph_pub.as_bytes().to_vec(), hkdf(b"aci.e2ee.v2.secp256k1", shared.raw_secret_bytes()))
        }
        Suite::X25519 => {
            let r: [u8; 32] = const_hex::decode(recipient_hex).unwrap().try_into().unwrap();
            let eph = x25519_dalek::StaticSecret::random_from_rng(OsRng);
            let eph_pub = x25519_dalek::PublicKey::from(&eph);
            let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(r));
            (eph_pub.as_bytes().to_vec(), hkdf(b"aci.e2ee.v2.x25519", shared.as_bytes()))
        }
        s => unimplemented!("no bare floor for {s}"),
    };
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let mut blob = Vec::with_capacity(eph_pub.len() + 12 + pt.len() + 16);
    blob.extend_from_slice(&eph_pub);
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(pt);
    let head = eph_pub.len() + 12;
    let tag = Aes256Gcm::new(&key.into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut blob[head..])
        .unwrap();
    blob.extend_from_slice(&tag);
    const_hex::encode(blob)
}

/// The floor for opening: hex decode, parse the ephemeral key, ECDH, HKDF, AES-GCM.
fn bare_open(suite: Suite, secret: &[u8; 32], field: &str, aad: &[u8]) -> Vec<u8> {
    let blob = const_hex::decode(field).unwrap();
    let eph_len = if suite == Suite::Secp256k1 { 65 } else { 32 };
    let key = match suite {
        Suite::Secp256k1 => {
            let sk = k256::SecretKey::from_bytes(secret.into()).unwrap();
            let eph = k256::PublicKey::from_sec1_bytes(&blob[..65]).unwrap();
            let shared = k256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), eph.as_affine());
            hkdf(b"aci.e2ee.v2.secp256k1", shared.raw_secret_bytes())
        }
        Suite::X25519 => {
            let sk = x25519_dalek::StaticSecret::from(*secret);
            let eph: [u8; 32] = blob[..32].try_into().unwrap();
            hkdf(b"aci.e2ee.v2.x25519", sk.diffie_hellman(&x25519_dalek::PublicKey::from(eph)).as_bytes())
        }
        s => unimplemented!("no bare floor for {s}"),
    };
    let (nonce, rest) = blob[eph_len..].split_at(12);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let mut buf = ct.to_vec();
    Aes256Gcm::new(&key.into())
        .decrypt_in_place_detached(Nonce::from_slice(nonce), aad, &mut buf, Tag::from_slice(tag))
        .unwrap();
    buf
}

/// Time `f` by the bench thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) rather than wall time:
/// on a machine shared with other work, time spent descheduled does not count, so ratios taken
/// side by side in one run stay meaningful.
fn cpu_timed<O>(b: &mut criterion::Bencher<'_>, mut f: impl FnMut() -> O) {
    b.iter_custom(|iters| {
        let start = cpu_time::ThreadTime::now();
        for _ in 0..iters {
            black_box(f());
        }
        start.elapsed()
    })
}

fn seal_open(c: &mut Criterion) {
    let aad =
        br#"{"algo":"x","field":"messages.0.content","model":"m","nonce":"00","purpose":"aci.e2ee.request.v2","ts":1}"#;
    for suite in Suite::ALL {
        let secret = [0x42u8; 32];
        let sk = SecretKey::from_bytes(suite, &secret).unwrap();
        let pk: PublicKey = sk.public_key();
        let pk_hex = pk.to_hex();
        let name = if suite == Suite::X25519 { "x25519" } else { "secp256k1" };

        let mut g = c.benchmark_group(format!("seal/{name}"));
        for size in SIZES {
            let pt = vec![0x61u8; size];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new("bare", size), &pt, |b, pt| {
                cpu_timed(b, || bare_seal(suite, &pk_hex, black_box(pt), aad))
            });
            for &backend in Backend::ALL {
                g.bench_with_input(BenchmarkId::new(format!("ours-{}", backend.name()), size), &pt, |b, pt| {
                    cpu_timed(b, || kat::seal_using(backend, &pk, black_box(pt), aad, &mut OsRng))
                });
            }
            if Backend::ALL.len() > 1 {
                g.bench_with_input(BenchmarkId::new("ours-fastest", size), &pt, |b, pt| {
                    cpu_timed(b, || seal(&pk, black_box(pt), aad, &mut OsRng))
                });
            }
        }
        g.finish();

        let mut g = c.benchmark_group(format!("open/{name}"));
        for size in SIZES {
            let field = seal(&pk, &vec![0x61u8; size], aad, &mut OsRng);
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new("bare", size), &field, |b, f| {
                cpu_timed(b, || bare_open(suite, &secret, black_box(f), aad))
            });
            for &backend in Backend::ALL {
                g.bench_with_input(BenchmarkId::new(format!("ours-{}", backend.name()), size), &field, |b, f| {
                    cpu_timed(b, || kat::open_using(backend, &sk, black_box(f), aad).unwrap())
                });
            }
            if Backend::ALL.len() > 1 {
                g.bench_with_input(BenchmarkId::new("ours-fastest", size), &field, |b, f| {
                    cpu_timed(b, || open(&sk, black_box(f), aad).unwrap())
                });
            }
        }
        g.finish();
    }
}

/// A sealed 1,000-event chat stream as the gateway frames it (sealed with the bare `seal` and
/// the AAD builder, so the bench needs no gateway code).
fn sealed_stream(suite: Suite, client: &SecretKey) -> Vec<u8> {
    let aad = tower_aci::protocol::aad::response(suite, "choices.0.delta.content", "chatcmpl-1", "m", "n", 1);
    let mut out = Vec::new();
    for i in 0..1000 {
        let content = seal(&client.public_key(), format!("token {i} of the answer ").as_bytes(), &aad, &mut OsRng);
        let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn sse(c: &mut Criterion) {
    for suite in Suite::ALL {
        let name = if suite == Suite::X25519 { "x25519" } else { "secp256k1" };
        let wire = sealed_stream(suite, &SecretKey::from_bytes(suite, &[7; 32]).unwrap());
        let mut g = c.benchmark_group(format!("sse_1000_events/{name}"));
        g.throughput(Throughput::Elements(1000));
        g.sample_size(20);
        g.bench_function("plain_parse", |b| {
            b.iter(|| {
                let mut d = SseDecoder::new(Default::default());
                d.push(&wire);
                let mut n = 0;
                while let Some(ev) = d.next_event().unwrap() {
                    n += ev.data().map_or(0, |d| d.len());
                }
                n
            })
        });
        g.bench_function("decrypt", |b| {
            b.iter(|| {
                let ctx = ExchangeContext::new(
                    Endpoint::ChatCompletions,
                    SecretKey::from_bytes(suite, &[7; 32]).unwrap(),
                    "m",
                    "n",
                    1,
                );
                let mut d = StreamDecryptor::new(ctx, Default::default());
                d.push(&wire);
                let mut n = 0;
                while let Some(_ev) = d.next_output().unwrap() {
                    n += 1;
                }
                d.finish().unwrap();
                n
            })
        });
        g.finish();
    }
}

fn rewrite(c: &mut Criterion) {
    let messages: Vec<_> = (0..20)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("message {i}: {}", "lorem ipsum ".repeat(20))}))
        .collect();
    let body = serde_json::to_vec(&json!({"model": "m", "temperature": 0.7, "messages": messages})).unwrap();
    let mut g = c.benchmark_group("rewrite_20_messages");
    for suite in Suite::ALL {
        let sk = SecretKey::from_bytes(suite, &[9; 32]).unwrap();
        let key = E2eeKey::parse("k", suite.algo(), sk.public_key().to_hex()).unwrap();
        g.bench_function(if suite == Suite::X25519 { "x25519" } else { "secp256k1" }, |b| {
            b.iter(|| {
                encrypt_request(
                    Endpoint::ChatCompletions,
                    black_box(&body),
                    &key,
                    &EncryptOptions::default(),
                    1,
                    &mut OsRng,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

/// How long one buffered embeddings answer keeps a thread busy: 100 inputs of 1,536 floats.
fn buffered_embeddings(c: &mut Criterion) {
    use tower_aci::protocol::decrypt_response;
    let mut g = c.benchmark_group("decrypt_buffered_100_embeddings");
    g.sample_size(20);
    for suite in Suite::ALL {
        let client = SecretKey::from_bytes(suite, &[3; 32]).unwrap();
        let data: Vec<_> = (0..100)
            .map(|i| {
                let embedding: Vec<f64> = (0..1536).map(|k| ((k * 7 + i) % 255) as f64 / 255.0 - 0.5).collect();
                let plain = serde_json::to_vec(&embedding).unwrap();
                let aad = tower_aci::protocol::aad::response(suite, &format!("data.{i}.embedding"), "", "e", "n", 1);
                json!({"object": "embedding", "index": i, "embedding": seal(&client.public_key(), &plain, &aad, &mut OsRng)})
            })
            .collect();
        let doc = json!({"object": "list", "data": data});
        let body = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap());
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(if suite == Suite::X25519 { "x25519" } else { "secp256k1" }, |b| {
            b.iter(|| {
                let ctx = ExchangeContext::new(
                    Endpoint::Embeddings,
                    SecretKey::from_bytes(suite, &[3; 32]).unwrap(),
                    "e",
                    "n",
                    1,
                );
                decrypt_response(&ctx, body.clone()).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, seal_open, sse, rewrite, buffered_embeddings);
criterion_main!(benches);
