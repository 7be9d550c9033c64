//! Generated checkpoints for the demo, tests and benchmarks: a safetensors
//! file (a real safetensors header followed by tensor data), a config, a
//! tokenizer-like JSON and a JSONL data file, plus the "v2" edit of the issue:
//! a quarter of the tensors rewritten, one file renamed, the JSONL appended.

use std::fs;
use std::io::Write;
use std::path::Path;

/// A tiny deterministic generator (SplitMix64) so generated data is reproducible.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Layout of the generated safetensors file.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes per tensor.
    pub tensor_bytes: usize,
}

impl Shape {
    /// A shape of about `total` bytes in 32 tensors.
    pub fn of_size(total: u64) -> Shape {
        let tensors = 32;
        let tensor_bytes = ((total / tensors as u64).max(4096) as usize) & !3;
        Shape {
            tensors,
            tensor_bytes,
        }
    }
}

fn safetensors(shape: Shape, seed: u64, rewritten: &[usize]) -> Vec<u8> {
    let mut header = String::from("{");
    for t in 0..shape.tensors {
        let start = t * shape.tensor_bytes;
        let end = start + shape.tensor_bytes;
        header.push_str(&format!(
            "\"layers.{t}.weight\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{start},{end}]}},",
            shape.tensor_bytes / 4
        ));
    }
    header.push_str("\"__metadata__\":{\"format\":\"pt\"}}");
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + shape.tensors * shape.tensor_bytes);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for t in 0..shape.tensors {
        let s = if rewritten.contains(&t) {
            seed ^ 0xA5A5_0000 ^ t as u64
        } else {
            seed ^ t as u64
        };
        let mut buf = vec![0u8; shape.tensor_bytes];
        SplitMix(s).fill(&mut buf);
        out.extend_from_slice(&buf);
    }
    out
}

fn jsonl(lines: std::ops::Range<usize>) -> String {
    lines
        .map(|i| {
            format!(
                "{{\"id\":{i},\"text\":\"sample {i} {}\"}}\n",
                "x".repeat(i % 97)
            )
        })
        .collect()
}

/// Writes version 1 of the checkpoint into `dir` (about `total` bytes).
pub fn write_v1(dir: &Path, total: u64, seed: u64) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let shape = Shape::of_size(total);
    fs::write(dir.join("model.safetensors"), safetensors(shape, seed, &[]))?;
    fs::write(
        dir.join("config.json"),
        format!(
            "{{\"hidden\":{},\"layers\":{}}}\n",
            shape.tensor_bytes / 4,
            shape.tensors
        ),
    )?;
    fs::write(
        dir.join("tokenizer.json"),
        "{\"vocab\":[\"a\",\"b\",\"c\"]}\n".repeat(2000),
    )?;
    fs::create_dir_all(dir.join("data"))?;
    fs::write(dir.join("data/train.jsonl"), jsonl(0..20_000))?;
    Ok(())
}

/// Turns a copy of v1 in `dir` into v2: rewrites every fourth tensor, renames
/// `tokenizer.json` to `tokenizer/tokenizer.json`, appends to the JSONL.
/// Returns the number of bytes that changed content (rewritten tensors plus the appended tail).
pub fn edit_to_v2(dir: &Path, total: u64, seed: u64) -> std::io::Result<u64> {
    let shape = Shape::of_size(total);
    let rewritten: Vec<usize> = (0..shape.tensors).filter(|t| t % 4 == 1).collect();
    fs::write(
        dir.join("model.safetensors"),
        safetensors(shape, seed, &rewritten),
    )?;
    fs::create_dir_all(dir.join("tokenizer"))?;
    fs::rename(
        dir.join("tokenizer.json"),
        dir.join("tokenizer/tokenizer.json"),
    )?;
    let tail = jsonl(20_000..22_000);
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join("data/train.jsonl"))?
        .write_all(tail.as_bytes())?;
    Ok((rewritten.len() * shape.tensor_bytes + tail.len()) as u64)
}

/// Copies a folder tree (regular files only).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

/// Compares two folder trees byte for byte; returns the first difference.
pub fn diff_trees(a: &Path, b: &Path) -> Option<String> {
    fn list(root: &Path, dir: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    list(root, &p, out);
                } else {
                    out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
    }
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    list(a, a, &mut la);
    list(b, b, &mut lb);
    la.sort();
    lb.sort();
    if la != lb {
        return Some(format!("file lists differ: {la:?} vs {lb:?}"));
    }
    for f in la {
        if fs::read(a.join(&f)).ok() != fs::read(b.join(&f)).ok() {
            return Some(format!("{f} differs"));
        }
    }
    None
}
