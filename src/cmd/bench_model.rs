//! `linesweep bench model` and `linesweep bench decode`: images/s of one architecture's
//! training step and evaluation pass, and of the ImageNet decoder, on synthetic inputs.

use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use linesweep_worker::config::{Arch, DataConfig, ModelConfig, Norm, Precision};
use linesweep_worker::data::{TrainData, imagenet};
use linesweep_worker::device;
use linesweep_worker::engine::eval::{cross_entropy, labels_tensor};
use linesweep_worker::model::Net;

use super::config_name;
use crate::cli::{DecodeBenchArgs, ModelBenchArgs};

pub fn model(args: ModelBenchArgs) -> anyhow::Result<()> {
    let arch: Arch = config_name(&args.arch, &format!("architecture `{}`", args.arch))?;
    let target = device::parse(&args.device)?;
    let precision: Precision = config_name(
        &args.precision,
        &format!("precision `{}` (f32 or bf16)", args.precision),
    )?;
    anyhow::ensure!(
        linesweep_worker::model::precision::supported(&target.device, precision),
        "the device {} cannot compute in {}",
        target.name,
        args.precision
    );
    let ad = target.device.clone().autodiff();
    ad.seed(1);
    let norm: Option<Norm> = match &args.norm {
        Some(n) => Some(config_name(n, &format!("norm `{n}` (batch or none)"))?),
        None => None,
    };
    let cfg = ModelConfig {
        arch,
        norm,
        ..ModelConfig::default()
    };
    let mut net = Net::new(&cfg, [3, args.size, args.size], args.classes, &ad);
    let x = Tensor::<4>::random(
        [args.batch, 3, args.size, args.size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &ad,
    );
    let labels: Vec<u16> = (0..args.batch).map(|i| (i % args.classes) as u16).collect();
    let y = labels_tensor(&labels, &ad);
    let mut optim = SgdConfig::new().init();
    let mut step = |net: Net| -> (Net, f32) {
        let loss = cross_entropy(net.autocast(precision).forward(x.clone()), y.clone()).mean();
        let v = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        (optim.step(0.01, net, grads), v)
    };
    (net, _) = step(net);
    let t = Instant::now();
    for _ in 0..args.steps {
        (net, _) = step(net);
    }
    let train_s = t.elapsed().as_secs_f64();
    let valid = net.valid();
    let xv = x.clone().to_device(&target.device);
    let yv = y.clone().to_device(&target.device);
    let eval = |m: &Net| {
        cross_entropy(m.autocast(precision).forward(xv.clone()), yv.clone())
            .mean()
            .into_scalar::<f32>()
    };
    eval(&valid);
    let t = Instant::now();
    for _ in 0..args.steps {
        eval(&valid);
    }
    let eval_s = t.elapsed().as_secs_f64();
    let images = (args.steps * args.batch) as f64;
    crate::render::emit(&format!(
        "{}\n",
        serde_json::json!({
            "impl": "linesweep", "device": target.name, "arch": args.arch, "batch": args.batch,
            "size": args.size, "steps": args.steps, "precision": precision.as_str(),
            "batch_norm": cfg.batch_norm(),
            "train_images_per_s": images / train_s, "eval_images_per_s": images / eval_s,
        })
    ))?;
    Ok(())
}

pub fn decode(args: DecodeBenchArgs) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir().context("creating a scratch directory")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| scratch.path().to_owned());
    if !dir.join("train").is_dir() {
        let per_class = args.images.div_ceil(2);
        imagenet::write_photo_like(&dir, per_class, args.side).context("writing JPEGs")?;
    }
    let cfg = DataConfig {
        image_size: args.size,
        ..DataConfig::default()
    };
    let loaded = imagenet::load(&dir, &cfg, Some(2))?;
    let TrainData::Folder(_) = &loaded.train else {
        anyhow::bail!("expected a folder dataset");
    };
    let idx: Vec<usize> = (0..loaded.train.len()).collect();
    // One batch untimed: the page cache holds the files for every measured pass alike.
    loaded
        .train
        .batch(&idx[..idx.len().min(32)], 0, args.threads);
    let t = Instant::now();
    let mut decoded = 0usize;
    for (k, chunk) in idx.chunks(32).enumerate() {
        decoded += loaded
            .train
            .batch(chunk, k as u64, args.threads)
            .labels
            .len();
    }
    let s = t.elapsed().as_secs_f64();
    crate::render::emit(&format!(
        "{}\n",
        serde_json::json!({
            "impl": "linesweep", "what": "imagenet train transform (decode + random-resized crop + flip + normalise)",
            "images": decoded, "threads": args.threads, "size": args.size,
            "images_per_s": decoded as f64 / s,
        })
    ))?;
    Ok(())
}
