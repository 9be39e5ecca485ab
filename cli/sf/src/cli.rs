//! The command line grammar of `sf` (clap derive), with examples in `--help`.
//!
//! Contract: only argument definitions; [`crate::commands`] runs them. Unknown
//! subcommands are captured as [`Command::External`] for plugin dispatch.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXAMPLES: &str = "\
Examples:
  sf login --url http://127.0.0.1:13000 -n demo --key \"$KEY\"
  sf apply -f examples/quickstart.yaml --wait
  sf get instances -o wide
  sf get instance hello -o yaml > hello.yaml && sf apply -f hello.yaml
  sf get instances -w -o json
  sf describe instance hello
  sf events instance hello -t audit -l 20
  sf plan -f examples/quickstart.yaml
  sf instance poweroff hello --wait
  sf instance screenshot hello -o hello.png
  sf instance snapshot hello --wait
  sf network addresses quickstart
  sf delete -f examples/quickstart.yaml --wait

Plugins: `sf foo ARGS` runs `sf-foo ARGS` from PATH with SHAKENFIST_API_URL,
SHAKENFIST_NAMESPACE and SHAKENFIST_TOKEN set; `sf plugin list` shows them.

Configuration: ~/.config/sf/config.yaml (or $SF_CONFIG), written by `sf login`;
SHAKENFIST_API_URL, SHAKENFIST_NAMESPACE, SHAKENFIST_KEY (or SHAKENFIST_TOKEN) and
SF_CA_FILE (a CA to trust for https) override it.";

/// sf — the Shaken Fist command line.
#[derive(Debug, Parser)]
#[command(
    name = "sf",
    version,
    about = "Drive a Shaken Fist cloud: apply, get, watch, delete VMs and networks.",
    after_help = EXAMPLES,
    allow_external_subcommands = true,
    propagate_version = true
)]
pub struct Cli {
    /// The namespace to work in (default: the logged-in namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// More columns.
    Wide,
    /// YAML (re-appliable with `sf apply`).
    Yaml,
    /// JSON.
    Json,
}

/// Output formats of commands that print documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocOutput {
    /// Human-readable.
    Table,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

/// The shells `sf completion` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store the API URL, namespace and key (or token) in the configuration file.
    #[command(
        after_help = "Examples:\n  sf login --url http://127.0.0.1:13000 -n system --key \"$(sf-ctl bootstrap-system-key)\"\n  SHAKENFIST_KEY=... sf login --url http://api:13000 -n demo"
    )]
    Login(LoginArgs),
    /// Create or update objects from YAML files (idempotent).
    #[command(
        after_help = "Examples:\n  sf apply -f web.yaml\n  sf apply -f manifests/ --wait --timeout 300\n  cat web.yaml | sf apply -f -"
    )]
    Apply(ApplyArgs),
    /// Delete objects named in files, or one object by kind and name.
    #[command(after_help = "Examples:\n  sf delete -f web.yaml --wait\n  sf delete instance web-1")]
    Delete(DeleteArgs),
    /// List objects of a kind, or show one.
    #[command(
        after_help = "Kinds: instance(s)/inst, network(s)/net, networkinterface(s)/iface, node(s),\nclusteroperation(s)/op, ipamlease(s)/lease, artifact(s), blob(s), namespace(s)/ns\n\nExamples:\n  sf get instances\n  sf get inst web-1 -o yaml\n  sf get ops -A -o wide\n  sf get instances -w -o json"
    )]
    Get(GetArgs),
    /// Show an object in detail: spec, status, conditions, operations, events.
    #[command(after_help = "Example:\n  sf describe instance web-1")]
    Describe(KindName),
    /// Show an object's events.
    #[command(
        after_help = "Examples:\n  sf events instance web-1\n  sf events network web -t audit -l 10"
    )]
    Events(EventsArgs),
    /// Show what the controllers would do for a change, without storing anything.
    #[command(after_help = "Examples:\n  sf plan -f web.yaml\n  sf plan -f web.yaml --delete")]
    Plan(PlanArgs),
    /// Manage namespaces (system namespace only).
    #[command(subcommand, visible_alias = "ns")]
    Namespace(NamespaceCommand),
    /// Manage a namespace's keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Shaken Fist verbs for instances.
    #[command(subcommand, visible_alias = "inst")]
    Instance(InstanceCommand),
    /// Shaken Fist verbs for networks.
    #[command(subcommand, visible_alias = "net")]
    Network(NetworkCommand),
    /// Cluster-wide views (system namespace only).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Hypervisor nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  sf completion bash > /etc/bash_completion.d/sf")]
    Completion {
        /// The shell.
        shell: Shell,
    },
    /// Plugins (`sf-<name>` executables on PATH).
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// A plugin.
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

/// `sf login`.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// sf-api's URL (default: $SHAKENFIST_API_URL).
    #[arg(long)]
    pub url: Option<String>,
    /// A namespace key (default: $SHAKENFIST_KEY); checked by authenticating.
    #[arg(long, conflicts_with = "token")]
    pub key: Option<String>,
    /// A token instead of a key (not refreshed; expires).
    #[arg(long)]
    pub token: Option<String>,
    /// A CA file (PEM) to trust for an https URL, e.g. sf-api's self-signed
    /// certificate (default: $SF_CA_FILE).
    #[arg(long)]
    pub ca_file: Option<String>,
}

/// Files to read objects from.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// A YAML/JSON file, a directory of them, or `-` for stdin (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

/// Waiting options.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until every object is Ready (apply) or gone (delete).
    #[arg(long)]
    pub wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `sf apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Sources.
    #[command(flatten)]
    pub files: FileArgs,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `sf delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// A YAML/JSON file, a directory of them, or `-` (repeatable).
    #[arg(short = 'f', long = "filename", conflicts_with_all = ["kind", "name"])]
    pub files: Vec<String>,
    /// The kind (with NAME).
    #[arg(requires = "name")]
    pub kind: Option<String>,
    /// The name.
    pub name: Option<String>,
    /// Do not fail when an object does not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `sf get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The kind.
    pub kind: String,
    /// One object's name.
    pub name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Keep watching and print every change (one JSON event per line with -o json).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// A label selector, e.g. `tier=web`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// A kind and a name.
#[derive(Debug, Args)]
pub struct KindName {
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
}

/// `sf events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The kind.
    pub kind: String,
    /// The name.
    pub name: String,
    /// Only events of this type (audit, mutate, status, usage, ...).
    #[arg(short = 't', long = "type")]
    pub event_type: Option<String>,
    /// At most this many (server default 100, cap 1000).
    #[arg(short = 'l', long)]
    pub limit: Option<u32>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Table)]
    pub output: DocOutput,
}

/// `sf plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Sources.
    #[command(flatten)]
    pub files: FileArgs,
    /// Plan deleting the objects instead of applying them.
    #[arg(long)]
    pub delete: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Table)]
    pub output: DocOutput,
}

/// `sf namespace ...`.
#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace, optionally with a first key (printed once).
    Create {
        /// The namespace.
        name: String,
        /// Also create a key with this name.
        #[arg(long)]
        key_name: Option<String>,
        /// The key (default: a random one).
        #[arg(long, requires = "key_name")]
        key: Option<String>,
    },
    /// List namespaces.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Table)]
        output: DocOutput,
    },
    /// Delete a namespace.
    Delete {
        /// The namespace.
        name: String,
    },
}

/// `sf key ...` (in the namespace given by -n, default the logged-in one).
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; the key is printed once.
    Create {
        /// The key's name.
        name: String,
        /// The key (default: a random one).
        #[arg(long)]
        key: Option<String>,
    },
    /// List key names.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Table)]
        output: DocOutput,
    },
    /// Delete a key.
    Delete {
        /// The key's name.
        name: String,
    },
}

/// Waiting for a verb.
#[derive(Debug, Args)]
pub struct VerbWait {
    /// Wait until the instance reaches the state.
    #[arg(long)]
    pub wait: bool,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `sf instance ...`.
#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// Set spec.powerState to on.
    Poweron {
        /// The instance.
        name: String,
        /// Waiting.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Set spec.powerState to off.
    Poweroff {
        /// The instance.
        name: String,
        /// Waiting.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Set spec.powerState to paused.
    Pause {
        /// The instance.
        name: String,
        /// Waiting.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Set spec.powerState to on (from paused).
    Unpause {
        /// The instance.
        name: String,
        /// Waiting.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Reboot (soft unless --hard).
    Reboot {
        /// The instance.
        name: String,
        /// Hard reset.
        #[arg(long)]
        hard: bool,
        /// Waiting for the reboot operation.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Take a screenshot and save it.
    Screenshot {
        /// The instance.
        name: String,
        /// Where to write the PNG.
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// How long to wait for the operation, in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Snapshot disks into artifacts (`<instance uid>-<device>`, one version each).
    Snapshot {
        /// The instance.
        name: String,
        /// One disk by device name (vda, sdb, nvme0); default: the first disk.
        #[arg(long, conflicts_with = "all")]
        device: Option<String>,
        /// Every disk.
        #[arg(long)]
        all: bool,
        /// Versions a newly made snapshot artifact keeps (default 3).
        #[arg(long = "max-versions")]
        max_versions: Option<u32>,
        /// Waiting for the snapshot operation.
        #[command(flatten)]
        wait: VerbWait,
    },
    /// Hot-plug a new interface (creates a NetworkInterface).
    AddInterface {
        /// The instance.
        name: String,
        /// The network.
        #[arg(long)]
        network: String,
        /// A fixed address (default: the next free one).
        #[arg(long)]
        address: Option<String>,
        /// The NIC model.
        #[arg(long)]
        model: Option<String>,
        /// The interface object's name (default: generated from the instance's).
        #[arg(long = "interface-name")]
        interface_name: Option<String>,
        /// Waiting.
        #[command(flatten)]
        wait: VerbWait,
    },
}

/// `sf network ...`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// The addresses held in a network, sorted numerically.
    Addresses {
        /// The network.
        name: String,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Table)]
        output: DocOutput,
    },
}

/// `sf admin ...`.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Cluster resource totals and per-node figures.
    Resources {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = DocOutput::Yaml)]
        output: DocOutput,
    },
}

/// `sf node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// `sf plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// List `sf-*` executables on PATH.
    List,
}
