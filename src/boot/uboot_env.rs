//! The U-Boot environment: fw_env.config, single and redundant copies, read and atomic write (libubootenv-compatible).
