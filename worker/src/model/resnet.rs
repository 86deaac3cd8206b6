//! Residual networks: the CIFAR family (ResNet-20/32/44/56: 3×3 stem, no max-pool, three stages
//! of 16/32/64 channels with (depth−2)/6 basic blocks each) and the ImageNet family
//! (ResNet-18/50, torchvision v1.5: 7×7/2 stem, 3×3/2 max-pool, four stages, stride on the 3×3
//! convolution of a bottleneck).
//!
//! Parameter names are torchvision's: `conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2,3}`,
//! `layer{..}.{i}.bn{1,2,3}`, `layer{..}.{i}.downsample.0` (1×1 conv) and `.downsample.1` (its
//! batch norm), `fc`. A snapshot of `resnet18`/`resnet50` with batch norm loads into
//! `torchvision.models.resnet18/50(num_classes=K)` with `load_state_dict`. Where the channel
//! count or resolution changes, the CIFAR family uses the same projection shortcut (He et al.'s
//! option B) rather than zero padding (option A), so that one block type serves both families.
//!
//! Initialisation follows torchvision: convolutions Kaiming-normal with fan-out (std
//! √(2/fan_out)), batch norm γ = 1 and β = 0, the classifier PyTorch's `nn.Linear` default.
//! Without batch norm (`norm = "none"`) the convolutions get biases instead.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

/// Which family and depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// CIFAR style with `n` basic blocks per stage (depth 6n+2).
    Cifar(usize),
    /// ImageNet ResNet-18 (basic blocks 2-2-2-2).
    R18,
    /// ImageNet ResNet-50 (bottleneck blocks 3-4-6-3).
    R50,
}

/// A basic block (two 3×3 convolutions) or, with `conv3`, a bottleneck (1×1, 3×3, 1×1).
#[derive(Module, Debug)]
pub struct Block {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    conv2: Conv2d,
    bn2: Option<BatchNorm>,
    conv3: Option<Conv2d>,
    bn3: Option<BatchNorm>,
    /// torchvision's `downsample` `nn.Sequential(conv1x1, BatchNorm2d)`: a tuple module gives
    /// the same `downsample.0` / `downsample.1` names.
    downsample: Option<(Conv2d, Option<BatchNorm>)>,
}

/// A residual network.
#[derive(Module, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: Option<BatchNorm>,
    layer1: Vec<Block>,
    layer2: Vec<Block>,
    layer3: Vec<Block>,
    layer4: Vec<Block>,
    fc: Linear,
    maxpool: Option<MaxPool2d>,
}

struct Builder<'a> {
    bn: bool,
    device: &'a Device,
}

impl Builder<'_> {
    fn conv(&self, cin: usize, cout: usize, k: usize, stride: usize) -> Conv2d {
        let p = k / 2;
        Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_bias(!self.bn)
            .with_initializer(Initializer::KaimingNormal {
                gain: std::f64::consts::SQRT_2,
                fan_out_only: true,
            })
            .init(self.device)
    }

    fn norm(&self, c: usize) -> Option<BatchNorm> {
        self.bn.then(|| BatchNormConfig::new(c).init(self.device))
    }

    fn basic(&self, cin: usize, cout: usize, stride: usize) -> Block {
        Block {
            conv1: self.conv(cin, cout, 3, stride),
            bn1: self.norm(cout),
            conv2: self.conv(cout, cout, 3, 1),
            bn2: self.norm(cout),
            conv3: None,
            bn3: None,
            downsample: (stride != 1 || cin != cout)
                .then(|| (self.conv(cin, cout, 1, stride), self.norm(cout))),
        }
    }

    fn bottleneck(&self, cin: usize, width: usize, stride: usize) -> Block {
        let cout = width * 4;
        Block {
            conv1: self.conv(cin, width, 1, 1),
            bn1: self.norm(width),
            conv2: self.conv(width, width, 3, stride),
            bn2: self.norm(width),
            conv3: Some(self.conv(width, cout, 1, 1)),
            bn3: self.norm(cout),
            downsample: (stride != 1 || cin != cout)
                .then(|| (self.conv(cin, cout, 1, stride), self.norm(cout))),
        }
    }

    /// A stage of `n` blocks; the first one changes stride and width.
    fn stage(
        &self,
        cin: &mut usize,
        width: usize,
        n: usize,
        stride: usize,
        neck: bool,
    ) -> Vec<Block> {
        (0..n)
            .map(|i| {
                let s = if i == 0 { stride } else { 1 };
                if neck {
                    let b = self.bottleneck(*cin, width, s);
                    *cin = width * 4;
                    b
                } else {
                    let b = self.basic(*cin, width, s);
                    *cin = width;
                    b
                }
            })
            .collect()
    }
}

fn norm_forward(bn: &Option<BatchNorm>, x: Tensor<4>) -> Tensor<4> {
    match bn {
        Some(bn) => super::norm::batch_norm(bn, x),
        None => x,
    }
}

impl Block {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some((conv, bn)) => norm_forward(bn, conv.forward(x.clone())),
            None => x.clone(),
        };
        let mut h = relu(norm_forward(&self.bn1, self.conv1.forward(x)));
        h = norm_forward(&self.bn2, self.conv2.forward(h));
        if let Some(conv3) = &self.conv3 {
            h = norm_forward(&self.bn3, conv3.forward(relu(h)));
        }
        relu(h + identity)
    }

    fn norms(&self) -> impl Iterator<Item = &BatchNorm> {
        let down = self.downsample.as_ref().and_then(|(_, bn)| bn.as_ref());
        [
            self.bn1.as_ref(),
            self.bn2.as_ref(),
            self.bn3.as_ref(),
            down,
        ]
        .into_iter()
        .flatten()
    }

    fn norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        let down = self.downsample.as_mut().and_then(|(_, bn)| bn.as_mut());
        [
            self.bn1.as_mut(),
            self.bn2.as_mut(),
            self.bn3.as_mut(),
            down,
        ]
        .into_iter()
        .flatten()
    }
}

impl ResNet {
    /// Builds the network for `in_channels`-channel images and `classes` outputs.
    pub fn new(
        depth: Depth,
        batch_norm: bool,
        in_channels: usize,
        classes: usize,
        device: &Device,
    ) -> Self {
        let b = Builder {
            bn: batch_norm,
            device,
        };
        match depth {
            Depth::Cifar(n) => {
                let mut c = 16;
                let conv1 = b.conv(in_channels, 16, 3, 1);
                let bn1 = b.norm(16);
                let layer1 = b.stage(&mut c, 16, n, 1, false);
                let layer2 = b.stage(&mut c, 32, n, 2, false);
                let layer3 = b.stage(&mut c, 64, n, 2, false);
                Self {
                    conv1,
                    bn1,
                    layer1,
                    layer2,
                    layer3,
                    layer4: Vec::new(),
                    fc: LinearConfig::new(c, classes).init(device),
                    maxpool: None,
                }
            }
            Depth::R18 | Depth::R50 => {
                let (blocks, neck) = match depth {
                    Depth::R18 => ([2, 2, 2, 2], false),
                    _ => ([3, 4, 6, 3], true),
                };
                let mut c = 64;
                let conv1 = b.conv(in_channels, 64, 7, 2);
                let bn1 = b.norm(64);
                let layer1 = b.stage(&mut c, 64, blocks[0], 1, neck);
                let layer2 = b.stage(&mut c, 128, blocks[1], 2, neck);
                let layer3 = b.stage(&mut c, 256, blocks[2], 2, neck);
                let layer4 = b.stage(&mut c, 512, blocks[3], 2, neck);
                Self {
                    conv1,
                    bn1,
                    layer1,
                    layer2,
                    layer3,
                    layer4,
                    fc: LinearConfig::new(c, classes).init(device),
                    maxpool: Some(
                        MaxPool2dConfig::new([3, 3])
                            .with_strides([2, 2])
                            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                            .init(),
                    ),
                }
            }
        }
    }

    /// The output layer.
    pub(crate) fn output_mut(&mut self) -> &mut Linear {
        &mut self.fc
    }

    /// Logits: `[batch, c, h, w] → [batch, classes]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let mut h = relu(norm_forward(&self.bn1, self.conv1.forward(x)));
        if let Some(pool) = &self.maxpool {
            h = pool.forward(h);
        }
        for block in self.blocks() {
            h = block.forward(h);
        }
        let [b, c, _, _] = h.dims();
        self.fc.forward(h.mean_dim(3).mean_dim(2).reshape([b, c]))
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.layer1
            .iter()
            .chain(&self.layer2)
            .chain(&self.layer3)
            .chain(&self.layer4)
    }

    /// The batch-norm layers.
    pub fn norms(&self) -> impl Iterator<Item = &BatchNorm> {
        self.bn1.iter().chain(self.blocks().flat_map(Block::norms))
    }

    /// The batch-norm layers, for the line's batch-norm modes.
    pub fn norms_mut(&mut self) -> impl Iterator<Item = &mut BatchNorm> {
        self.bn1.iter_mut().chain(
            self.layer1
                .iter_mut()
                .chain(&mut self.layer2)
                .chain(&mut self.layer3)
                .chain(&mut self.layer4)
                .flat_map(Block::norms_mut),
        )
    }
}
