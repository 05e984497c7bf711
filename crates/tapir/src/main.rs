//! tapir's command line: `tapir run` starts the daemon (the `tapir`
//! library); the other commands talk to it over its control socket.

#![deny(unsafe_code)]

use tapir::daemon;
use tapir::northbound::{config, control, inventory, show};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tapir",
    version,
    about = "BGP for routed hypervisors",
    infer_subcommands = true
)]
struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS", value_parser = timeout_secs)]
    timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Log filter (tracing syntax), e.g. `info` or `tapir=debug`.
        #[arg(long, default_value = "info", env = "TAPIR_LOG")]
        log: String,
        /// Log lines as text (for terminals and journald) or as one JSON
        /// object per line.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// Use this router id instead of the config's (one file for every
        /// hypervisor).
        #[arg(long, value_name = "A.B.C.D")]
        router_id: Option<std::net::Ipv4Addr>,
        /// Keep run-time state (VM registrations) here instead of the
        /// config's `state-dir`.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Check a configuration file and print its errors with line and column.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show the state of a running daemon.
    #[command(infer_subcommands = true)]
    Show {
        #[command(subcommand)]
        what: Show,
    },
    /// Read the config file again and apply it as a diff (also on
    /// SIGHUP): prints each change and what it did. Neighbors are added,
    /// removed or reset; `announce`, [[service]], [kernel], policies, VM
    /// groups and the inventory change without resetting sessions;
    /// router-id, local-as, listen, [metrics], [drain] and [gateway] wait
    /// for a restart. A bad file changes nothing. Exits 2 when changes wait for
    /// a restart, 1 on an error.
    Reload {
        /// Only print what a reload would do.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon for good: a Cease to every peer and our routes out
    /// of the kernel; the shipped unit (Restart=on-failure) leaves it
    /// stopped. With --graceful, keep forwarding and let peers keep our
    /// routes until tapir starts again (RFC 4724). SIGTERM (`systemctl
    /// stop|restart`, upgrades) stops gracefully when the config has a
    /// graceful restart time and a state-dir; SIGINT stops for good.
    Stop {
        #[arg(long)]
        graceful: bool,
    },
    /// Drain a VM before a planned migration (RFC 8326): its routes go
    /// upstream with GRACEFUL_SHUTDOWN (65535:0), then are withdrawn after
    /// `[drain] withdraw-after` or with --withdraw.
    Drain {
        /// The VM's inventory name, or its tap.
        vm: Option<String>,
        /// Every VM with routes.
        #[arg(long, conflicts_with = "vm")]
        all: bool,
        /// Withdraw the routes upstream now.
        #[arg(long)]
        withdraw: bool,
    },
    /// End a drain: the VM's routes go upstream as before.
    Undrain {
        vm: Option<String>,
        #[arg(long, conflicts_with = "vm")]
        all: bool,
    },
    /// Disable, enable, restart or refresh a session (a neighbor's or a
    /// VM's name, or an address; a VM's name means all its sessions).
    #[command(infer_subcommands = true)]
    Neighbor {
        #[command(subcommand)]
        what: Neighbor,
    },
    /// Register, unregister or sync VMs at run time (hypervisor hooks, an
    /// inventory rendered from the source of truth).
    #[command(infer_subcommands = true)]
    Vm {
        #[command(subcommand)]
        what: Vm,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): tapir(1), or with --config tapir.toml(5).
    Man {
        /// The configuration file's page, tapir.toml(5).
        #[arg(long)]
        config: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Neighbor {
    /// Close the session (Cease, Administrative Shutdown) and keep it
    /// closed, both ways, until `enable` (or a restart of tapir).
    Disable { target: String },
    /// Open a disabled session again.
    Enable { target: String },
    /// Close the session (Cease, Administrative Reset) and open it again
    /// at once.
    Restart { target: String },
    /// Without a reset: ask the peer for its routes again (ROUTE-REFRESH)
    /// and send it ours again.
    Refresh { target: String },
}

#[derive(Subcommand)]
enum Vm {
    /// Register a VM and the prefixes it may announce; kept across restarts.
    Add {
        name: String,
        /// The tap the VM is on: the entry holds there only.
        #[arg(long)]
        interface: Option<String>,
        /// An address of the VM (repeatable, at least one): the entry
        /// holds where one of them is routed.
        #[arg(long = "address", value_name = "ADDRESS", required = true)]
        addresses: Vec<std::net::IpAddr>,
        /// A prefix the VM may announce, with an optional length range like
        /// `10.3.0.0/24{32,32}` (repeatable).
        #[arg(long = "prefix", value_name = "PREFIX")]
        prefixes: Vec<String>,
        /// The ASN the VM must use.
        #[arg(long)]
        asn: Option<u32>,
        /// The MAC address of the VM's NIC: the entry holds only where the
        /// kernel sees it behind the VM's address.
        #[arg(long)]
        mac: Option<String>,
        /// Registers one NIC of a VM with several (Ganeti's
        /// INTERFACE_UUID): each NIC's registration stands beside the
        /// others', with the VM's prefixes.
        #[arg(long)]
        nic: Option<String>,
    },
    /// Unregister a VM registered with `vm add`: every NIC, or one.
    Remove {
        name: String,
        /// Only this NIC (as given to `vm add --nic`).
        #[arg(long)]
        nic: Option<String>,
    },
    /// Make the synced inventory exactly FILE's `[[vm]]` entries, as one
    /// change (registrations and the config's entries stay); prints what
    /// changed.
    Sync {
        file: std::path::PathBuf,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum Show {
    /// The daemon: version, router id, uptime, sessions, RIB and kernel sizes.
    Status {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// One line per session.
    // `pe` is a prefix of both `peer` and `peers`; like birdc's `sh pr`,
    // it means the list.
    #[command(alias = "pe")]
    Peers {
        /// Also the VM addresses where nothing answers yet (probes).
        #[arg(long)]
        all: bool,
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Everything about one session (or a VM's sessions): capabilities,
    /// timers with time left, counters, last NOTIFICATIONs, BFD.
    Peer {
        /// A neighbor's or VM's name, or an address.
        name: String,
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Routes received from neighbors (Adj-RIB-In), accepted or refused,
    /// with the best path marked and whether it is in the kernel.
    Routes {
        /// Only this prefix, or the prefixes that contain this address.
        prefix: Option<String>,
        /// Only routes from this neighbor or VM session (name or address).
        #[arg(long)]
        peer: Option<String>,
        /// Only routes from this VM (inventory name or tap).
        #[arg(long)]
        vm: Option<String>,
        /// Only the routes authorisation refused.
        #[arg(long)]
        refused: bool,
        /// Only how many: routes, accepted, refused, best, in the kernel.
        #[arg(long)]
        count: bool,
        /// What goes out to this neighbor instead (name or address), after
        /// policy, with the attributes as sent.
        #[arg(long, value_name = "NEIGHBOR")]
        export: Option<String>,
        /// Why this prefix goes to the neighbor (--export, or each
        /// upstream neighbor) or not: the policy term, or the reason.
        #[arg(long, value_name = "PREFIX")]
        why: Option<String>,
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// BFD sessions: peer, state, discriminators, timers.
    Bfd {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// Health-checked services (guest role): healthy or not, the checks,
    /// the last error.
    Services {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// The running config, and how the file on disk differs from it
    /// (what a reload would do, what waits for a restart).
    Config {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// The Loc-RIB: the best path of every prefix and where it came from.
    Rib {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
    /// VMs known on the taps, with their sessions and what they may announce.
    Vms {
        /// Print JSON (schema in docs/json.md).
        #[arg(long)]
        json: bool,
    },
}

/// How the CLI reaches the daemon.
struct Ctl<'a> {
    socket: &'a std::path::Path,
    timeout: std::time::Duration,
}

/// `--timeout`: a positive number of seconds.
fn timeout_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 3600.0 => Ok(t),
        _ => Err(format!("`{s}`: seconds, more than 0 and at most 3600")),
    }
}

/// The subcommand of `cmd` that `word` names: exactly, by an alias, or
/// as the start of one name only.
fn subcommand<'a>(cmd: &'a clap::Command, word: &str) -> Option<&'a clap::Command> {
    let exact = cmd
        .get_subcommands()
        .find(|s| s.get_name() == word || s.get_all_aliases().any(|a| a == word));
    exact.or_else(|| {
        let mut starting = cmd
            .get_subcommands()
            .filter(|s| s.get_name().starts_with(word));
        match (starting.next(), starting.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    })
}

/// For an abbreviation that fits several commands, the message that
/// names them (clap only says it does not know the word).
fn ambiguous(err: &clap::Error, args: &[String]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let ContextValue::String(bad) = err.get(ContextKind::InvalidSubcommand)? else {
        return None;
    };
    let root = <Cli as clap::CommandFactory>::command();
    let mut cmd = &root;
    for word in args.iter().skip(1).take_while(|w| *w != bad) {
        if let Some(sub) = subcommand(cmd, word) {
            cmd = sub;
        }
    }
    let fits: Vec<&str> = cmd
        .get_subcommands()
        .map(|s| s.get_name())
        .filter(|n| n.starts_with(bad.as_str()))
        .collect();
    (fits.len() > 1).then(|| format!("`{bad}` is ambiguous: {}", fits.join(", ")))
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => match ambiguous(
            &e,
            &args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        ) {
            Some(m) => {
                eprintln!("tapir: {m}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    let ctl = Ctl {
        socket: &cli.socket,
        timeout: std::time::Duration::from_secs_f64(cli.timeout),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tapir: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tapir", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { config: true } => {
            print!("{}", tapir::northbound::manual::tapir_toml_5());
            ExitCode::SUCCESS
        }
        Command::Man { config: false } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            let mut page = Vec::new();
            match clap_mangen::Man::new(cmd).render(&mut page) {
                Ok(()) => {
                    print!(
                        "{}{}",
                        String::from_utf8_lossy(&page),
                        tapir::northbound::manual::tapir_1_sections()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tapir: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            log,
            log_format,
            router_id,
            state_dir,
        } => run(
            &rt,
            config,
            log,
            log_format,
            router_id,
            state_dir,
            &cli.socket,
        ),
        Command::Show { what } => show(&rt, &ctl, what),
        Command::Reload { dry_run, json } => {
            client(&rt, &ctl, control::Request::Reload { dry_run }, json)
        }
        Command::Drain {
            vm: None,
            all: false,
            ..
        }
        | Command::Undrain {
            vm: None,
            all: false,
        } => {
            eprintln!("tapir: name a VM or give --all");
            ExitCode::FAILURE
        }
        Command::Drain { vm, withdraw, .. } => client(
            &rt,
            &ctl,
            control::Request::Drain {
                vm,
                withdraw,
                undrain: false,
            },
            false,
        ),
        Command::Neighbor { what } => {
            let (op, target) = match what {
                Neighbor::Disable { target } => (control::NeighborOp::Disable, target),
                Neighbor::Enable { target } => (control::NeighborOp::Enable, target),
                Neighbor::Restart { target } => (control::NeighborOp::Restart, target),
                Neighbor::Refresh { target } => (control::NeighborOp::Refresh, target),
            };
            client(&rt, &ctl, control::Request::Neighbor { op, target }, false)
        }
        Command::Undrain { vm, .. } => client(
            &rt,
            &ctl,
            control::Request::Drain {
                vm,
                withdraw: false,
                undrain: true,
            },
            false,
        ),
        Command::Stop { graceful } => client(&rt, &ctl, control::Request::Stop { graceful }, false),
        Command::Vm { what } => vm(&rt, &ctl, what),
    }
}

/// `tapir check`: the config's summary, its warnings, or its error.
fn check(config: &std::path::Path) -> ExitCode {
    match config::Config::load(config) {
        Ok(c) if c.gateway.is_some() => {
            println!(
                "{}: ok (guest role: router id {}, AS {}, gateway {}, {} services, {} neighbors)",
                config.display(),
                c.router_id,
                c.local_as,
                c.gateway
                    .as_ref()
                    .filter(|g| !g.addresses.is_empty())
                    .map_or("from the default routes".to_string(), |g| {
                        let a: Vec<String> = g.addresses.iter().map(|a| a.to_string()).collect();
                        a.join(", ")
                    }),
                c.services.len(),
                c.neighbors.len(),
            );
            ExitCode::SUCCESS
        }
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("{}: warning: {w}", config.display());
            }
            println!(
                "{}: ok (router id {}, AS {}, {} neighbors, {} VM groups, {} VMs in the inventory)",
                config.display(),
                c.router_id,
                c.local_as,
                c.neighbors.len(),
                c.groups.len(),
                c.vms.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `tapir run`: logging, the config with the command line's overrides,
/// and the daemon until it stops.
fn run(
    rt: &tokio::runtime::Runtime,
    config: std::path::PathBuf,
    log: String,
    log_format: LogFormat,
    router_id: Option<std::net::Ipv4Addr>,
    state_dir: Option<std::path::PathBuf>,
    socket: &std::path::Path,
) -> ExitCode {
    let filter = match log.parse::<tracing_subscriber::filter::Targets>() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tapir: --log {log:?}: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(filter, log_format);
    let overrides = config::Overrides {
        router_id,
        state_dir,
    };
    let cfg = match config::Config::load(&config) {
        Ok(c) => overrides.apply(c),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(daemon::run(cfg, overrides, &config, socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapir: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tapir show …`: asks the daemon, prints the answer.
fn show(rt: &tokio::runtime::Runtime, ctl: &Ctl, what: Show) -> ExitCode {
    let (req, json) = match what {
        Show::Peer { name, json } => return show_peer(rt, ctl, &name, json),
        Show::Routes {
            prefix,
            peer,
            vm,
            refused,
            count,
            export,
            why,
            json,
        } => {
            let query = control::RouteQuery {
                prefix,
                peer,
                vm,
                refused,
                count,
                export,
                why,
            };
            if let Err(e) = query.check() {
                eprintln!("tapir: {e}");
                return ExitCode::FAILURE;
            }
            (control::Request::ShowRoutes { query }, json)
        }
        Show::Status { json } => (control::Request::ShowStatus, json),
        Show::Peers { all, json } => (control::Request::ShowPeers { all }, json),
        Show::Vms { json } => (control::Request::ShowVms, json),
        Show::Rib { json } => (control::Request::ShowRib, json),
        Show::Bfd { json } => (control::Request::ShowBfd, json),
        Show::Services { json } => (control::Request::ShowServices, json),
        Show::Config { json } => (control::Request::ShowConfig, json),
    };
    client(rt, ctl, req, json)
}

/// `tapir vm add|remove`: checked here with the daemon's own rules, then
/// sent.
fn vm(rt: &tokio::runtime::Runtime, ctl: &Ctl, what: Vm) -> ExitCode {
    let req = match what {
        Vm::Add {
            name,
            interface,
            addresses,
            prefixes,
            asn,
            mac,
            nic,
        } => {
            let vm = inventory::Registration {
                name,
                interface,
                addresses,
                asn,
                prefixes,
                mac,
                nic,
                synced: false,
            };
            // Catch mistakes here, with the daemon's own rules.
            if let Err(e) = vm.to_entry() {
                eprintln!("tapir: {e}");
                return ExitCode::FAILURE;
            }
            control::Request::VmAdd { vm }
        }
        Vm::Remove { name, nic } => control::Request::VmRemove { name, nic },
        Vm::Sync { file, dry_run } => {
            // The file's errors point at their line, before anything is
            // sent.
            let vms = match tapir::northbound::config::parse_inventory_file(&file) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("tapir: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let vms = vms
                .iter()
                .map(inventory::Registration::from_entry)
                .collect();
            let req = control::Request::VmSync { vms, dry_run };
            let size = serde_json::to_vec(&req).map_or(0, |v| v.len() as u64);
            if size >= control::MAX_REQUEST {
                eprintln!(
                    "tapir: {}: {size} bytes as a request, more than the control socket takes ({} bytes)",
                    file.display(),
                    control::MAX_REQUEST
                );
                return ExitCode::FAILURE;
            }
            req
        }
    };
    client(rt, ctl, req, false)
}

/// Logs go to stderr: colours only on a terminal, and no timestamps under
/// systemd (journald stamps every line itself).
fn init_logging(filter: tracing_subscriber::filter::Targets, format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Under systemd, straight to the journal with every field its own
    // (`journalctl -u tapir PEER=tor-v4`); JSON lines stay on stderr.
    if journald && format == LogFormat::Text {
        let path = std::path::Path::new(tapir::northbound::journal::SOCKET);
        if let Ok(j) = tapir::northbound::journal::Journal::connect(path) {
            tracing_subscriber::registry().with(filter).with(j).init();
            return;
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match (format, journald) {
        (LogFormat::Json, _) => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(filter)
            .init(),
        (LogFormat::Text, true) => builder.without_time().finish().with(filter).init(),
        (LogFormat::Text, false) => builder.finish().with(filter).init(),
    }
}

/// `show peer NAME|ADDRESS`: every session with that name or address,
/// with its BFD session.
fn show_peer(rt: &tokio::runtime::Runtime, ctl: &Ctl, name: &str, json: bool) -> ExitCode {
    let peers = match ask(rt, ctl, &control::Request::ShowPeers { all: true }) {
        Ok(control::Response::Peers { peers }) => peers,
        Ok(other) => return print(&other, json),
        Err(code) => return code,
    };
    let bfd = match ask(rt, ctl, &control::Request::ShowBfd) {
        Ok(control::Response::Bfd { sessions }) => sessions,
        _ => Vec::new(),
    };
    let bare = name.split('%').next().unwrap_or(name);
    let found: Vec<_> = peers
        .into_iter()
        .filter(|p| p.name == name || p.address == bare || p.vm.as_deref() == Some(name))
        .collect();
    if found.is_empty() {
        eprintln!("tapir: no session named {name} or with that address (see `tapir show peers`)");
        return ExitCode::FAILURE;
    }
    if json {
        let v: Vec<serde_json::Value> = found
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["bfd"] = serde_json::to_value(bfd.iter().find(|b| b.peer == p.address))
                    .unwrap_or_default();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for p in &found {
            print!(
                "{}",
                show::peer(p, bfd.iter().find(|b| b.peer == p.address))
            );
        }
    }
    ExitCode::SUCCESS
}

fn ask(
    rt: &tokio::runtime::Runtime,
    ctl: &Ctl,
    req: &control::Request,
) -> Result<control::Response, ExitCode> {
    rt.block_on(control::request(ctl.socket, req, ctl.timeout))
        .map_err(|e| {
            eprintln!("tapir: {e}");
            ExitCode::FAILURE
        })
}

/// Sends one request to the daemon and prints the answer.
fn client(rt: &tokio::runtime::Runtime, ctl: &Ctl, req: control::Request, json: bool) -> ExitCode {
    match ask(rt, ctl, &req) {
        Ok(resp) => print(&resp, json),
        Err(code) => code,
    }
}

/// Prints an answer as a table (or text), or as JSON.
fn print(resp: &control::Response, json: bool) -> ExitCode {
    use control::Response;
    let pretty = |v: serde_json::Result<String>| v.unwrap_or_default() + "\n";
    let text = match (resp, json) {
        (Response::Error { message }, _) => {
            eprintln!("tapir: {message}");
            return ExitCode::FAILURE;
        }
        (Response::Done { message }, _) => format!("{message}\n"),
        (Response::Why { verdicts }, true) => pretty(serde_json::to_string_pretty(verdicts)),
        (Response::Why { verdicts }, false) => show::why(verdicts),
        (Response::Reloaded { report }, _) => {
            print!(
                "{}",
                match json {
                    true => pretty(serde_json::to_string_pretty(report)),
                    false => show::reload(report),
                }
            );
            // A script must not take "some of it waits" for done.
            let waits = !report.dry_run && report.pending_restart().next().is_some();
            return ExitCode::from(if waits { 2 } else { 0 });
        }
        (Response::Config { config }, true) => pretty(serde_json::to_string_pretty(config)),
        (Response::Config { config }, false) => show::config(config),
        (Response::Peers { peers }, true) => pretty(serde_json::to_string_pretty(peers)),
        (Response::Routes { routes }, true) => pretty(serde_json::to_string_pretty(routes)),
        (Response::Vms { vms }, true) => pretty(serde_json::to_string_pretty(vms)),
        (Response::Rib { rib }, true) => pretty(serde_json::to_string_pretty(rib)),
        (Response::Rib { rib }, false) => show::rib(rib),
        (Response::Bfd { sessions }, true) => pretty(serde_json::to_string_pretty(sessions)),
        (Response::Bfd { sessions }, false) => show::bfd(sessions),
        (Response::Peers { peers }, false) => show::peers(peers),
        (Response::Routes { routes }, false) => show::routes(routes),
        (Response::RouteCount { count }, true) => pretty(serde_json::to_string_pretty(count)),
        (Response::RouteCount { count }, false) => format!(
            "{} routes: {} accepted, {} refused; {} best, {} in the kernel\n",
            count.routes, count.accepted, count.refused, count.best, count.installed
        ),
        (Response::Vms { vms }, false) => show::vms(vms),
        (Response::Status { status }, true) => pretty(serde_json::to_string_pretty(status)),
        (Response::Status { status }, false) => show::status(status),
        (Response::Services { services }, true) => pretty(serde_json::to_string_pretty(services)),
        (Response::Services { services }, false) => show::services(services),
    };
    print!("{text}");
    ExitCode::SUCCESS
}
