//! What training runs share: the training scaffold, AdamW, the noise schedule, training images,
//! checkpoints and seeded initialisation.
pub mod checkpoint;
pub mod images;
pub mod init;
pub mod noise_schedule;
pub mod optim;
pub mod scaffold;
