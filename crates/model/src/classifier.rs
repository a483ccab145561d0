//! One way to classify faces: weights loaded with their class names and input side, faces in,
//! the top class and every class's probability out, Grad-CAM on request. The command line's
//! `predict` and `serve` and the `classify` example all go through it.
//!
//! Faces come in as the network sees them: `side x side` grayscale pixels, row-major. Reading an
//! image file, detecting and cropping its faces is the dataset crate's job
//! (`dexpression_dataset::crop::load_face_pixels` for an already cropped face,
//! `dexpression_dataset::faces::detect_face_inputs` for a photo), so this crate decodes no files.

use std::path::Path;

use candle_core::Device;

use dexpression_runfiles::{CK_PLUS_CLASS_NAMES, NEUTRAL_CLASS_NAME};

use crate::{batch_from_pixels, Dexpression, Error, GradCam, Result, WeightsMetadata};

/// A network with its class names, ready to classify faces.
///
/// ```no_run
/// use dexpression_model::{candle_core::Device, Classifier};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let classifier = Classifier::load("weights.safetensors".as_ref(), &Device::Cpu)?;
/// let face = vec![128u8; classifier.image_size() * classifier.image_size()]; // a cropped face
/// let prediction = classifier.classify(&face)?;
/// println!("{} ({:.0}%)", prediction.label, 100.0 * prediction.confidence());
/// # Ok(()) }
/// ```
pub struct Classifier {
    network: Dexpression,
    class_names: Vec<String>,
    names_recorded: bool,
}

/// What the network says of one face.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Index of the most probable class (the first of equals).
    pub class: usize,
    /// Its name.
    pub label: String,
    /// Every class's probability, in the network's output order (see
    /// [`Classifier::class_names`]).
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// The probability of the predicted class.
    pub fn confidence(&self) -> f32 {
        self.probabilities[self.class]
    }

    fn from_probabilities(probabilities: Vec<f32>, class_names: &[String]) -> Result<Self> {
        let class = top_class(&probabilities)
            .ok_or_else(|| Error::Config("the network returned no probabilities".into()))?;
        Ok(Self {
            class,
            label: class_names[class].clone(),
            probabilities,
        })
    }
}

/// The index of the largest value, the first of equals; `None` for an empty slice. NaN counts
/// as smaller than every number (all NaN: the first).
pub(crate) fn top_class(probabilities: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (index, &p) in probabilities.iter().enumerate() {
        if !p.is_nan() && best.is_none_or(|(_, top)| p > top) {
            best = Some((index, p));
        }
    }
    best.map(|(index, _)| index)
        .or((!probabilities.is_empty()).then_some(0))
}

impl Classifier {
    /// Loads weights (safetensors) with the class names and input side their metadata records
    /// (every file `train` writes has them). Files without metadata (the PyTorch port's, through
    /// `import_torch`) get the input side the shapes imply and [`port_class_names`] when the
    /// network has 7 or 8 outputs; other files without names are an error naming the file.
    pub fn load(weights: &Path, device: &Device) -> Result<Self> {
        let network = Dexpression::load(weights, device)?;
        let n_classes = network.config().n_classes;
        match WeightsMetadata::read(weights)? {
            Some(metadata) => Self::new(network, metadata.class_names),
            None => {
                let names = port_class_names(n_classes).ok_or_else(|| {
                    Error::Config(format!(
                        "{}: {n_classes} outputs and no class names in its metadata; only the \
                         port's 7 (CK+ emotions) or 8 (with Neutral) outputs can go without them \
                         (save the weights with their names, or build a Classifier::new)",
                        weights.display()
                    ))
                })?;
                let mut classifier = Self::new(network, names)?;
                classifier.names_recorded = false;
                Ok(classifier)
            }
        }
    }

    /// A classifier of `network` whose outputs are named `class_names`, in order.
    pub fn new(network: Dexpression, class_names: Vec<String>) -> Result<Self> {
        let n_classes = network.config().n_classes;
        if class_names.len() != n_classes {
            return Err(Error::Config(format!(
                "{} class names for a network of {n_classes} outputs",
                class_names.len()
            )));
        }
        Ok(Self {
            network,
            class_names,
            names_recorded: true,
        })
    }

    /// Checks that the network is the `expected` variant; the error names the `weights` file
    /// and the variant it holds.
    pub fn check_variant(&self, expected: crate::Variant, weights: &Path) -> Result<()> {
        let found = self.network.config().variant;
        if found != expected {
            return Err(Error::Weights {
                path: weights.to_path_buf(),
                message: format!(
                    "these are the {found} variant's weights, not the {expected} variant's; pass `--variant {found}` or use weights trained as the {expected} variant"
                ),
            });
        }
        Ok(())
    }

    /// The network.
    pub fn network(&self) -> &Dexpression {
        &self.network
    }

    /// Gives the network back.
    pub fn into_network(self) -> Dexpression {
        self.network
    }

    /// Keeps the pool's threads awake through each forward ([`Dexpression::with_threads_awake`]).
    pub fn with_threads_awake(mut self, awake: bool) -> Self {
        self.network = self.network.with_threads_awake(awake);
        self
    }

    /// The class names, in the network's output order.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Whether the class names came from the weights (false: [`port_class_names`] stood in).
    pub fn names_recorded(&self) -> bool {
        self.names_recorded
    }

    /// The side of the square grayscale faces the network takes.
    pub fn image_size(&self) -> usize {
        self.network.config().image_size
    }

    /// Classifies one face: `side x side` grayscale pixels ([`Self::image_size`]).
    pub fn classify(&self, face: &[u8]) -> Result<Prediction> {
        self.check_faces(face, 1)?;
        let mut predictions = self.classify_batch(face)?;
        Ok(predictions.remove(0))
    }

    /// Classifies a batch of faces, concatenated (`n x side x side` pixels), in one forward.
    pub fn classify_batch(&self, faces: &[u8]) -> Result<Vec<Prediction>> {
        let side = self.image_size();
        let batch = batch_from_pixels(faces, side, self.network.device())?;
        self.network
            .probabilities(&batch)?
            .into_iter()
            .map(|probabilities| Prediction::from_probabilities(probabilities, &self.class_names))
            .collect()
    }

    /// Classifies one face and explains a class with Grad-CAM: `class`, or the predicted one.
    pub fn explain(&self, face: &[u8], class: Option<usize>) -> Result<(Prediction, GradCam)> {
        self.check_faces(face, 1)?;
        let mut explained = self.explain_batch(face, class)?;
        Ok(explained.remove(0))
    }

    /// [`Self::explain`] for a batch of faces, concatenated, in one forward and backward.
    pub fn explain_batch(
        &self,
        faces: &[u8],
        class: Option<usize>,
    ) -> Result<Vec<(Prediction, GradCam)>> {
        let batch = batch_from_pixels(faces, self.image_size(), self.network.device())?;
        self.network
            .explain(&batch, class)?
            .into_iter()
            .map(|explained| {
                let prediction =
                    Prediction::from_probabilities(explained.probabilities, &self.class_names)?;
                Ok((prediction, explained.heatmap))
            })
            .collect()
    }

    fn check_faces(&self, pixels: &[u8], faces: usize) -> Result<()> {
        let side = self.image_size();
        if pixels.len() != faces * side * side {
            return Err(Error::Config(format!(
                "{} pixels given for {faces} face(s) of {side}x{side}",
                pixels.len()
            )));
        }
        Ok(())
    }
}

/// The class names of the PyTorch port's weights, which record none, for a network of
/// `n_classes` outputs: CK+'s seven emotions in the port's label order (the run files' names), and
/// Neutral as an eighth class; `None` for other counts.
pub fn port_class_names(n_classes: usize) -> Option<Vec<String>> {
    let mut names: Vec<String> = CK_PLUS_CLASS_NAMES
        .iter()
        .map(|name| name.to_string())
        .collect();
    match n_classes {
        7 => Some(names),
        8 => {
            names.push(NEUTRAL_CLASS_NAME.to_string());
            Some(names)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DexpressionConfig;

    #[test]
    fn the_top_class_is_the_first_of_equals_and_nan_never_wins() {
        assert_eq!(top_class(&[0.1, 0.4, 0.4, 0.1]), Some(1));
        assert_eq!(top_class(&[f32::NAN, 0.2, 0.7]), Some(2));
        assert_eq!(top_class(&[0.3, f32::NAN]), Some(0));
        assert_eq!(top_class(&[]), None);
    }

    #[test]
    fn a_batch_gives_the_same_predictions_as_one_face_at_a_time() {
        let network = Dexpression::new(DexpressionConfig::with(3, 48), 5, &Device::Cpu).unwrap();
        let names: Vec<String> = ["pain", "no_pain", "other"].map(String::from).into();
        let classifier = Classifier::new(network, names.clone()).unwrap();
        let faces: Vec<u8> = (0..3 * 48 * 48).map(|i| (i * 37 % 251) as u8).collect();
        let batch = classifier.classify_batch(&faces).unwrap();
        assert_eq!(batch.len(), 3);
        for (face, expected) in faces.chunks(48 * 48).zip(&batch) {
            let one = classifier.classify(face).unwrap();
            assert_eq!(one.class, expected.class);
            assert_eq!(one.label, names[one.class]);
            for (a, b) in one.probabilities.iter().zip(&expected.probabilities) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
            let sum: f32 = one.probabilities.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
        assert!(classifier.classify(&faces[..100]).is_err());
    }

    #[test]
    fn names_must_match_the_outputs() {
        let network = Dexpression::new(DexpressionConfig::with(3, 48), 5, &Device::Cpu).unwrap();
        let error = Classifier::new(network, vec!["one".into()]).err().unwrap();
        assert!(error.to_string().contains("1 class names"), "{error}");
        assert_eq!(port_class_names(7).unwrap().len(), 7);
        assert_eq!(port_class_names(8).unwrap()[7], "Neutral");
        assert!(port_class_names(3).is_none());
    }

    #[test]
    fn the_port_names_are_the_dataset_crates_ck_plus_names() {
        assert_eq!(
            port_class_names(7).unwrap(),
            dexpression_dataset::class_names(false)
        );
        assert_eq!(
            port_class_names(8).unwrap(),
            dexpression_dataset::class_names(true)
        );
    }
}
