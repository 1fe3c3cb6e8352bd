//! What training runs share: the noise schedule, AdamW, training images and checkpoints.
pub mod checkpoint;
pub mod images;
pub mod init;
pub mod noise_schedule;
pub mod optim;
