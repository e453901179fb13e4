use std::process::ExitCode;

use clap::Parser;
use observer::{
    agent::{
        options::{DnsOptions, InventorySource, RunError, RunOptions},
        run,
    },
    architecture::{Architecture, ModelHandle},
    capture::{DnsCaptureOptions, MapSizes},
    cli::{Cli, Command, RunArgs},
    scope::Scoper,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Logs go to stderr (stdout may carry the flow log); `log` records, such as the kernel
    // program's aya-log diagnostics, are forwarded into tracing.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_command(*args),
        Command::Check(args) => ExitCode::from(observer::check::check_command(&args) as u8),
        Command::Report(a) => exit(observer::report::report_command(
            &observer::report::ReportOptions {
                architecture: a.architecture,
                flow_logs: a.flow_logs,
                prometheus: a.prometheus,
                since: a.since,
                until: a.until,
                format: a.format,
                output: a.output,
            },
        )),
        Command::Learn(a) => exit(observer::report::learn_command(
            &observer::report::LearnOptions {
                flow_logs: a.flow_logs,
                inventory: a.inventory,
                output: a.output,
                name: a.name,
            },
        )),
        Command::KernelCheck { format } => kernel_check(format),
        Command::Validate { file } => {
            ExitCode::from(observer::architecture::validate_command(&file).clamp(0, 255) as u8)
        }
    }
}

/// `observer kernel-check`: every program loaded with the agent's default map sizes.
fn kernel_check(format: observer::cli::KernelCheckFormat) -> ExitCode {
    let sizes = MapSizes {
        flows: 131_072,
        ring_bytes: 2 * 1024 * 1024,
        dns_ring_bytes: 1024 * 1024,
        dns_queries: 16_384,
    };
    let verdicts = match observer::capture::verify::verify(sizes) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("observer: {e}");
            return ExitCode::from(2);
        }
    };
    let kernel = observer::capture::loader::kernel_release();
    match format {
        observer::cli::KernelCheckFormat::Json => {
            let doc = serde_json::json!({"kernel": kernel, "programs": verdicts});
            println!("{doc}");
        }
        observer::cli::KernelCheckFormat::Text => {
            println!("kernel {kernel}");
            for v in &verdicts {
                let depth: Vec<String> = v.stack_depth.iter().map(u32::to_string).collect();
                let insns = v.insns_processed.map_or("?".into(), |n| n.to_string());
                let measured: Vec<String> = v.measured_depth.iter().map(u32::to_string).collect();
                if v.loaded {
                    println!(
                        "{}: loaded; stack depth {} (the build measured {}, worst call chain {} bytes), {insns} instructions processed",
                        v.program,
                        depth.join("+"),
                        measured.join("+"),
                        v.measured_chain
                    );
                } else {
                    println!(
                        "{}: REFUSED: {}; this is a bug in observer, please report it",
                        v.program, v.verifier
                    );
                }
            }
        }
    }
    if verdicts.iter().all(|v| v.loaded) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn run_command(args: RunArgs) -> ExitCode {
    let scoper = Scoper {
        pod_cidrs: args.pod_cidrs,
        service_cidrs: args.service_cidrs,
        node_ips: args.node_ips.into_iter().collect(),
        host_netns: observer::scope::host_netns(&args.host_proc),
    };
    let model = match &args.architecture {
        Some(path) => match Architecture::load(path) {
            Ok(m) => {
                tracing::info!(
                    name = m.name(),
                    hash = m.hash(),
                    "architecture loaded from {}",
                    path.display()
                );
                Some((path.clone(), ModelHandle::new(m)))
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "observer: {}: the architecture was not accepted; fix it (observer validate FILE) and restart",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let inventory = match (args.inventory, args.kubeconfig, args.no_kubernetes) {
        (_, _, true) => InventorySource::None,
        (Some(file), _, _) => InventorySource::File(file),
        (None, Some(kubeconfig), _) => InventorySource::Api {
            kubeconfig: Some(kubeconfig),
        },
        (None, None, _) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            InventorySource::Api { kubeconfig: None }
        }
        (None, None, _) => InventorySource::None,
    };
    let dns = if args.no_dns {
        None
    } else {
        let root = args.dns_cgroup.clone().or_else(|| {
            std::fs::read_to_string("/proc/self/mounts")
                .ok()
                .and_then(|m| observer::cgroups::cgroup2_mount(&m))
        });
        let Some(cgroup_root) = root else {
            eprintln!(
                "observer: no cgroup2 hierarchy is mounted here, and DNS capture attaches to its root; mount it (mount -t cgroup2 none /sys/fs/cgroup) and pass --dns-cgroup DIR, or run with --no-dns"
            );
            return ExitCode::from(2);
        };
        Some(DnsOptions {
            capture: DnsCaptureOptions { cgroup_root },
            max_names: args.dns_max_names,
            grace: args.dns_grace,
        })
    };
    let opts = RunOptions {
        dns,
        model,
        inventory,
        hosts_file: args.hosts_file,
        hold: args.hold,
        ingress: args.ingress,
        flow_log: args.flow_log,
        flow_log_max_bytes: args.flow_log_max_bytes,
        flush_interval: args.flush_interval,
        poll_interval: args.poll_interval,
        idle_timeout: args.idle_timeout,
        duration: args.duration,
        metrics_addr: args.metrics_addr,
        node: args.node.clone(),
        scoper,
        host_proc: args.host_proc,
        map_sizes: MapSizes {
            flows: args.flow_map_size,
            ring_bytes: args.ring_bytes,
            dns_ring_bytes: args.dns_ring_bytes,
            dns_queries: args.dns_query_map_size,
        },
        series_limits: observer::metrics::SeriesLimits {
            max_series: args.max_series,
            ttl: args.series_ttl,
        },
        traces: observer::traces::TraceOptions {
            endpoint: args.otlp_endpoint,
            resighting_interval: args.trace_resighting_interval,
            queue: args.trace_queue_size,
            node: args.node.clone(),
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("observer: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("observer: {e}");
            // Missing kernel features and privileges are configuration problems: exit 2.
            ExitCode::from(match e {
                RunError::Capture(_)
                | RunError::Listen { .. }
                | RunError::FlowLog { .. }
                | RunError::Inventory(_)
                | RunError::HostsFile { .. } => 2,
                RunError::Signal(_) => 1,
            })
        }
    }
}
