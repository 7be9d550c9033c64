//! `syncnode demo`: a generated checkpoint, one publisher and a few nodes as
//! real processes on loopback; v1, then a delta v2; prints what happened.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use node::checkpoint;
use node::cluster::{Cluster, Proc, wait_complete};

/// Options of `syncnode demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Number of node daemons.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Approximate checkpoint size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// Work folder (default: a new folder under the system temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work folder (data, configs, logs) for inspection.
    #[arg(long)]
    keep: bool,
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

const CHANNEL: &str = "demo";

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 32 {
        bail!("--nodes must be between 1 and 32");
    }
    if args.size_mib == 0 || args.size_mib > 16 * 1024 {
        bail!("--size-mib must be between 1 and 16384");
    }
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("syncnode-demo-{}", std::process::id())),
    };
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "demo folder {} is not empty; pass another --dir",
            dir.display()
        );
    }
    let result = run_in(&args, &dir);
    if args.keep || result.is_err() {
        println!("\nwork folder kept: {} (logs: *.log)", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(args: &DemoArgs, dir: &std::path::Path) -> anyhow::Result<()> {
    let bin = std::env::current_exe().context("cannot locate the syncnode binary")?;
    let cluster = Cluster::new(bin, dir.to_path_buf())?;
    let size = args.size_mib << 20;
    let src1 = dir.join("checkpoint-v1");
    checkpoint::write_v1(&src1, size, 42)?;
    let total1 = dir_size(&src1);
    println!(
        "syncnode demo: 1 publisher + {} nodes as separate processes on 127.0.0.1",
        args.nodes
    );
    println!(
        "generated checkpoint v1: {} in {} (model.safetensors, config.json, tokenizer.json, data/train.jsonl)",
        human(total1),
        src1.display()
    );
    println!("publisher key: {}\n", cluster.publisher);

    // v1
    let t0 = Instant::now();
    let mut seed = cluster.seed("seed-v1", &src1, CHANNEL, "v1", &[], &[])?;
    seed.wait_ready(Duration::from_secs(60))?;
    let seed_addr = seed.addr()?;
    let mut nodes: Vec<Proc> = Vec::new();
    for i in 1..=args.nodes {
        let p = cluster.node(
            &format!("node{i}"),
            CHANNEL,
            std::slice::from_ref(&seed_addr),
            &[&cluster.publisher],
            &[],
        )?;
        nodes.push(p);
    }
    for n in &mut nodes {
        n.wait_ready(Duration::from_secs(30))?;
    }
    let refs: Vec<&Proc> = nodes.iter().collect();
    let v1 = wait_complete(&refs, CHANNEL, "v1", Duration::from_secs(600))?;
    let wall1 = t0.elapsed();
    let served1 = seed.status()?.bytes_served;
    println!("v1 published by seed-v1 at {seed_addr}");
    report(&nodes, &v1, &src1, CHANNEL)?;
    println!(
        "  all nodes complete {:.2} s after the publisher started; publisher sent {} ({:.2} copies)\n",
        wall1.as_secs_f64(),
        human(served1),
        served1 as f64 / total1 as f64
    );

    // v2: a new publisher process, joining through the nodes.
    seed.kill();
    let src2 = dir.join("checkpoint-v2");
    checkpoint::copy_tree(&src1, &src2)?;
    let changed = checkpoint::edit_to_v2(&src2, size, 42)?;
    let total2 = dir_size(&src2);
    println!(
        "generated checkpoint v2: {} — every 4th tensor rewritten, tokenizer.json renamed to \
         tokenizer/tokenizer.json, data/train.jsonl appended; {} of content changed",
        human(total2),
        human(changed)
    );
    let node_addrs: Vec<String> = nodes.iter().map(|n| n.addr()).collect::<Result<_, _>>()?;
    let t1 = Instant::now();
    let seed2 = cluster.seed("seed-v2", &src2, CHANNEL, "v2", &node_addrs, &[])?;
    let v2 = wait_complete(&refs, CHANNEL, "v2", Duration::from_secs(600))?;
    let wall2 = t1.elapsed();
    let served2 = seed2.status()?.bytes_served;
    println!("v2 published by seed-v2, which joined through the nodes");
    report(&nodes, &v2, &src2, CHANNEL)?;
    println!(
        "  all nodes complete {:.2} s after the publisher started; publisher sent {}",
        wall2.as_secs_f64(),
        human(served2)
    );
    let max_fetch = v2.iter().map(|v| v.bytes_fetched).max().unwrap_or(0);
    println!(
        "  delta: each node fetched at most {} for {} of changed content ({:.2}x); the rest was reused from v1\n",
        human(max_fetch),
        human(changed),
        max_fetch as f64 / changed.max(1) as f64
    );
    println!(
        "every node's {CHANNEL}/current is byte-identical to the source, each chunk verified (BLAKE3 against the signed Merkle root) and each file's SHA-256 checked."
    );
    Ok(())
}

fn report(
    nodes: &[Proc],
    st: &[node::control::VersionStatus],
    src: &std::path::Path,
    channel: &str,
) -> anyhow::Result<()> {
    println!(
        "  {:<8} {:>9} {:>12} {:>12}  content",
        "node", "time", "fetched", "reused"
    );
    for (n, v) in nodes.iter().zip(st) {
        let current = n.data_dir.join(channel).join("current");
        let check = match checkpoint::diff_trees(src, &current) {
            None => "identical to source".to_owned(),
            Some(d) => bail!(
                "{}: materialized version differs from the source: {d}",
                n.name
            ),
        };
        println!(
            "  {:<8} {:>7.2} s {:>12} {:>12}  {}",
            n.name,
            v.elapsed_ms as f64 / 1000.0,
            human(v.bytes_fetched),
            human(v.bytes_reused),
            check
        );
    }
    Ok(())
}

fn dir_size(d: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            };
        }
    }
    total
}
