//! What the network costs: multiply-adds per layer and floating-point operations per training image,
//! counted from the weights' shapes and the config's sides (benchmarks report rates against them).

use crate::Dexpression;

impl Dexpression {
    /// Floating-point operations of one image's training step (forward, and the backward's weight
    /// and input gradients; conv1 needs no input gradient), counted over the convolutions and the
    /// fully connected layer, which are all but a fraction of a percent of the work.
    pub fn training_flops_per_image(&self) -> f64 {
        let forward: f64 = self
            .layer_macs()
            .iter()
            .map(|(name, macs)| {
                let backward = if *name == "conv1" { 1.0 } else { 2.0 };
                2.0 * macs * (1.0 + backward)
            })
            .sum();
        forward
    }

    /// Multiply-adds of one image's forward pass, per layer with weights (convolutions and fc), from
    /// the weights' shapes and the config's sides.
    pub fn layer_macs(&self) -> Vec<(&'static str, f64)> {
        let config = self.config();
        let dims = |name: &str| -> Vec<usize> {
            self.named_vars()
                .iter()
                .find(|var| var.name == format!("{name}.weight"))
                .map(|var| var.var.dims().to_vec())
                .unwrap_or_default()
        };
        let conv = |name: &'static str, out_side: usize| {
            let macs = dims(name).iter().product::<usize>() * out_side * out_side;
            (name, macs as f64)
        };
        let conv1_side = crate::config::conv1_out(config.image_size);
        let (side2, side3) = (
            config.block1_side(),
            config.reduce_pool().out_side(config.block1_side()),
        );
        vec![
            conv("conv1", conv1_side),
            conv("conv2a", side2),
            conv("conv2b", side2),
            conv("conv2c", side2),
            conv("conv3a", side3),
            conv("conv3b", side3),
            conv("conv3c", side3),
            ("fc", dims("fc").iter().product::<usize>() as f64),
        ]
    }
}
