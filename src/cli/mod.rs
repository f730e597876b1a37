//! The `rota` command line: one file per command group; this file parses and dispatches.
//!
//! Exit codes (SPEC §5): 0 success, 1 the operation failed, 2 usage error or no service.

pub mod bar;
pub mod bundle;
pub mod client;
pub mod keygen;
pub mod mcu;
pub mod service;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "rota",
    version,
    about = "Over-the-air update agent for embedded Linux gateways"
)]
pub struct Cli {
    /// System configuration (default: $ROTA_CONFIG or /etc/rota/system.toml)
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write an ed25519 key pair: NAME.key.pem (PKCS#8) and NAME.pub.pem (SPKI)
    Keygen {
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Build, inspect and verify bundles
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Install a bundle from a path or an http(s) URL through the running service
    Install {
        source: String,
        /// One JSON object per line for every event
        #[arg(long)]
        json: bool,
        /// Allow a version lower than the booted slot's
        #[arg(long)]
        force_version: bool,
        /// Skip the compatible check
        #[arg(long)]
        ignore_compatible: bool,
        /// Reboot once the new slot is activated
        #[arg(long)]
        reboot: bool,
        /// Install nothing: say how many bytes the install would download (and reuse)
        #[arg(long, conflicts_with = "reboot")]
        dry_run: bool,
    },
    /// Cancel the running install
    Cancel,
    /// Slots, booted slot, primary, versions, MCU nodes
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Mark a slot good, bad or active (as RAUC)
    Mark {
        #[arg(value_parser = ["good", "bad", "active"])]
        state: String,
        /// booted, other, or a slot name like rootfs.1
        #[arg(default_value = "booted")]
        slot: String,
    },
    /// Check for an update now ([update] poll)
    Poll,
    /// Microcontrollers attached to the gateway
    #[command(subcommand)]
    Mcu(McuCommand),
    /// Run the daemon
    Service,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build and sign a bundle from DIR/manifest.toml and the images it names
    Create {
        dir: PathBuf,
        out: PathBuf,
        #[arg(long, value_name = "KEY.pem")]
        key: PathBuf,
        /// Chunk size in bytes (power of two, 4 KiB to 16 MiB)
        #[arg(long, value_name = "BYTES")]
        chunk_size: Option<u32>,
        /// The devices' version scheme: semver or debian (default: `[system]
        /// version-scheme` of the file given with --config, else semver)
        #[arg(long, value_name = "SCHEME")]
        version_scheme: Option<crate::version::VersionScheme>,
        /// Build time in seconds since 1970 (the manifest's build, every member's mtime):
        /// the same inputs then make a byte-identical bundle
        #[arg(long, value_name = "SECONDS", env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: Option<u64>,
        /// Bundle format: 2 (slot images as compressed 4 KiB blocks, fetched by content)
        /// or 1 (raw images in chunks, for devices with rota before format 2)
        #[arg(long, value_name = "1|2", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
        format: u32,
        /// zstd level of the frames, 1 (fast) to 22; 0 stores them uncompressed
        #[arg(long, value_name = "LEVEL", default_value_t = 19)]
        zstd_level: i32,
        /// Most bytes of raw image per frame, a multiple of 4096 up to 8 MiB (default:
        /// 64 KiB, so a device on any earlier image fetches little; 8 MiB with
        /// --delta-from, whose patches carry just the blocks that changed). Larger
        /// frames compress better; a device holds one whole frame per decoder.
        #[arg(long, value_name = "BYTES")]
        frame_size: Option<u32>,
        /// The image the devices run now (the previous release's slot image): patches
        /// against it carry just the blocks a device running it lacks
        #[arg(long, value_name = "IMAGE")]
        delta_from: Option<PathBuf>,
    },
    /// Show the manifest; with a keyring, check the signature
    Info {
        bundle: PathBuf,
        #[arg(long, value_name = "PEM")]
        keyring: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check the signature and every payload hash
    Verify {
        bundle: PathBuf,
        #[arg(long, value_name = "PEM", required = true)]
        keyring: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum McuCommand {
    /// List configured MCU nodes and their state
    List {
        #[arg(long)]
        json: bool,
    },
    /// Read the image state of one node
    State { name: String },
    /// Relay one image file (MCUboot or raw .bin with CRC32 trailer) to one node
    Relay { name: String, image: PathBuf },
}

/// What a command ends with; `main` turns it into the process exit code.
#[derive(Debug)]
pub enum Failure {
    /// The operation failed (exit 1).
    Failed(String),
    /// Usage error or no service reachable (exit 2).
    Usage(String),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Failed(_) => 1,
            Failure::Usage(_) => 2,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Failed(m) | Failure::Usage(m) => f.write_str(m),
        }
    }
}

pub type CliResult = Result<(), Failure>;

impl Cli {
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(crate::config::Config::default_path)
    }
}

/// The commands that read no configuration: the client commands ask the running
/// service (which reads its own), keygen and bundle info/verify work on files alone.
fn ignores_config(command: &Command) -> Option<&'static str> {
    match command {
        Command::Keygen { .. } => Some("keygen"),
        Command::Bundle(BundleCommand::Info { .. }) => Some("bundle info"),
        Command::Bundle(BundleCommand::Verify { .. }) => Some("bundle verify"),
        Command::Install { .. } => Some("install"),
        Command::Cancel => Some("cancel"),
        Command::Status { .. } => Some("status"),
        Command::Mark { .. } => Some("mark"),
        Command::Poll => Some("poll"),
        Command::Bundle(BundleCommand::Create { .. }) | Command::Mcu(_) | Command::Service => None,
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> CliResult {
    if let (Some(path), Some(name)) = (&cli.config, ignores_config(&cli.command)) {
        // Accepting and ignoring it would let a user believe another config was used.
        return Err(Failure::Usage(format!(
            "--config {} does not apply to `rota {name}`: {}",
            path.display(),
            if matches!(name, "keygen" | "bundle info" | "bundle verify") {
                "it reads no system configuration (bundle info/verify take --keyring)"
            } else {
                "it asks the running service, which uses the config it was started with (`rota --config PATH service`)"
            }
        )));
    }
    let config_path = cli.config_path();
    match cli.command {
        Command::Keygen { out_dir, name } => keygen::run(&out_dir, &name),
        Command::Bundle(BundleCommand::Create {
            dir,
            out,
            key,
            chunk_size,
            version_scheme,
            source_date_epoch,
            format,
            zstd_level,
            frame_size,
            delta_from,
        }) => {
            let scheme = match (version_scheme, &cli.config) {
                (Some(s), _) => s,
                (None, Some(path)) => {
                    crate::config::Config::load(path)
                        .map_err(|e| Failure::Usage(e.to_string()))?
                        .system
                        .version_scheme
                }
                (None, None) => crate::version::VersionScheme::default(),
            };
            let frame_size = frame_size.unwrap_or(if delta_from.is_some() {
                crate::bundle::pack::FRAME_BYTES_WITH_BASE
            } else {
                crate::bundle::pack::FRAME_BYTES
            });
            let max_frame = crate::bundle::blockmap::MAX_FRAME_BLOCKS * 4096;
            if frame_size == 0 || frame_size % 4096 != 0 || frame_size > max_frame {
                return Err(Failure::Usage(format!(
                    "--frame-size {frame_size}: a multiple of 4096, at most {max_frame}"
                )));
            }
            if format == 2
                && !crate::bundle::pack::HAS_ENCODER
                && (zstd_level > 0 || delta_from.is_some())
            {
                return Err(Failure::Usage(format!(
                    "this rota was built without the zstd encoder (Cargo feature `encoder`, \
                     left out of device builds): it cannot compress (--zstd-level \
                     {zstd_level}){}; create bundles on the build host, or pass \
                     --zstd-level 0 to store frames uncompressed",
                    if delta_from.is_some() {
                        " nor make patches (--delta-from)"
                    } else {
                        ""
                    }
                )));
            }
            if format == 1 && delta_from.is_some() {
                return Err(Failure::Usage(
                    "--delta-from needs format 2 (format 1 stores raw chunks)".into(),
                ));
            }
            let opts = crate::bundle::writer::CreateOptions {
                chunk_size: chunk_size.unwrap_or(crate::bundle::DEFAULT_CHUNK_SIZE),
                scheme,
                source_date_epoch,
                pack: (format == 2).then_some(crate::bundle::pack::PackOptions {
                    level: zstd_level,
                    frame_blocks: frame_size / 4096,
                    delta_from,
                }),
            };
            bundle::create(&dir, &out, &key, &opts)
        }
        Command::Bundle(BundleCommand::Info {
            bundle,
            keyring,
            json,
        }) => bundle::info(&bundle, &keyring, json),
        Command::Bundle(BundleCommand::Verify { bundle, keyring }) => {
            bundle::verify(&bundle, &keyring)
        }
        Command::Install {
            source,
            json,
            force_version,
            ignore_compatible,
            reboot: _,
            dry_run: true,
        } => client::estimate(&source, json, force_version, ignore_compatible),
        Command::Install {
            source,
            json,
            force_version,
            ignore_compatible,
            reboot,
            dry_run: false,
        } => client::install(&source, json, force_version, ignore_compatible, reboot),
        Command::Cancel => client::cancel(),
        Command::Status { json } => client::status(json),
        Command::Mark { state, slot } => client::mark(&state, &slot),
        Command::Poll => client::poll(),
        Command::Mcu(cmd) => mcu::run(&config_path, cmd),
        Command::Service => service::run(&config_path),
    }
}
