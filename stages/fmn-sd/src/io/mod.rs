//! Files and formats: component weights, single-file checkpoints, where a model comes from,
//! weight patches, learned-token embeddings, the CLIP tokenizer and a folder's sampling
//! defaults.
pub mod attention;
pub mod embedding;
pub mod json;
pub mod patch;
pub mod sampling_defaults;
pub mod single_file;
pub mod source;
pub mod tokenizer;
pub mod weights;
