//! Running each `sf` command.
//!
//! Contract: every command returns `Ok(exit code)` or an error that `main` prints as
//! `error: ...` with exit code 1. Output goes to stdout (tables, YAML, JSON, the
//! `kind/name created|configured|unchanged` lines); progress and warnings to stderr.
//! Manifests are parsed and validated completely before the first request.

use std::ffi::OsString;
use std::io::Write;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use chrono::{DateTime, Utc};
use http::Method;
use serde_json::{Value, json};
use sf_client::{Credentials, SfClient};

use crate::apply::{self, Target};
use crate::cli::{
    AdminCommand, ApplyArgs, Cli, Command, DeleteArgs, DocOutput, EventsArgs, GetArgs,
    InstanceCommand, KeyCommand, KindName, LoginArgs, NamespaceCommand, NetworkCommand,
    NodeCommand, Output, PlanArgs, PluginCommand, Shell,
};
use crate::config::{self, FileConfig};
use crate::kinds::{self, API_PREFIX, KindInfo};
use crate::manifest;
use crate::output::{self, Colour, Table, TableStyle};
use crate::plugin;
use crate::rest::Rest;

/// Writes to stdout; a closed pipe (`sf get ... | head`) ends the process quietly.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    if let Err(e) = result
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// A connected context.
struct Ctx {
    client: SfClient,
    rest: Rest,
    /// The namespace to work in.
    namespace: String,
    colour: Colour,
}

fn settings() -> anyhow::Result<FileConfig> {
    let path = config::config_path()?;
    Ok(config::effective(config::load(&path)?))
}

async fn connect(namespace_flag: Option<&str>) -> anyhow::Result<Ctx> {
    let c = settings()?;
    let url = c.api_url.clone().ok_or_else(|| {
        anyhow!("no API URL: run `sf login --url URL ...` or set SHAKENFIST_API_URL")
    })?;
    let auth_namespace = c.namespace.clone().ok_or_else(|| {
        anyhow!("no namespace: run `sf login -n NAMESPACE ...` or set SHAKENFIST_NAMESPACE")
    })?;
    if c.key.is_none() && c.token.is_none() {
        bail!("no credentials: run `sf login --key KEY` or set SHAKENFIST_KEY");
    }
    let client = sf_client::connect_with_ca(
        Credentials {
            url,
            namespace: auth_namespace.clone(),
            key: c.key,
            token: c.token,
        },
        c.ca_file.as_deref().map(std::path::Path::new),
    )
    .await?;
    Ok(Ctx {
        rest: Rest::new(client.kube()),
        client,
        namespace: namespace_flag.map_or(auth_namespace, str::to_string),
        colour: Colour::detect(),
    })
}

fn kind_of(name: &str) -> anyhow::Result<&'static KindInfo> {
    kinds::lookup(name)
        .ok_or_else(|| anyhow!("unknown kind {name:?}; known: {}", kinds::known_names()))
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let ns = cli.namespace.as_deref();
    match cli.command {
        Command::Login(args) => login(ns, args).await,
        Command::Completion { shell } => completion(shell),
        Command::Plugin(PluginCommand::List) => plugin_list(),
        Command::External(args) => external(ns, args).await,
        Command::Apply(args) => apply_cmd(&connect(ns).await?, args).await,
        Command::Delete(args) => delete_cmd(&connect(ns).await?, args).await,
        Command::Get(args) => get_cmd(&connect(ns).await?, args).await,
        Command::Describe(args) => describe(&connect(ns).await?, args).await,
        Command::Events(args) => events(&connect(ns).await?, args).await,
        Command::Plan(args) => plan(&connect(ns).await?, args).await,
        Command::Namespace(c) => namespace_cmd(&connect(ns).await?, c).await,
        Command::Key(c) => key_cmd(&connect(ns).await?, c).await,
        Command::Instance(c) => instance_cmd(&connect(ns).await?, c).await,
        Command::Network(NetworkCommand::Addresses { name, output }) => {
            addresses(&connect(ns).await?, &name, output).await
        }
        Command::Admin(AdminCommand::Resources { output }) => {
            let ctx = connect(ns).await?;
            let v = ctx.rest.get("/admin/resources").await?;
            print_doc(&v, output)?;
            Ok(0)
        }
        Command::Node(NodeCommand::List { output }) => {
            let ctx = connect(ns).await?;
            get_cmd(
                &ctx,
                GetArgs {
                    kind: "nodes".into(),
                    name: None,
                    output,
                    watch: false,
                    all_namespaces: false,
                    selector: None,
                },
            )
            .await
        }
    }
}

fn print_doc(v: &Value, output: DocOutput) -> anyhow::Result<()> {
    match output {
        DocOutput::Json => emit(&format!("{}\n", serde_json::to_string_pretty(v)?)),
        DocOutput::Yaml | DocOutput::Table => emit(&output::to_yaml(std::slice::from_ref(v))?),
    }
    Ok(())
}

async fn login(ns: Option<&str>, args: LoginArgs) -> anyhow::Result<i32> {
    let path = config::config_path()?;
    let existing = config::load(&path)?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let url = args
        .url
        .or_else(|| env("SHAKENFIST_API_URL"))
        .or(existing.api_url)
        .ok_or_else(|| anyhow!("give --url (or set SHAKENFIST_API_URL)"))?;
    let namespace = ns
        .map(str::to_string)
        .or_else(|| env("SHAKENFIST_NAMESPACE"))
        .or(existing.namespace)
        .ok_or_else(|| anyhow!("give -n NAMESPACE (or set SHAKENFIST_NAMESPACE)"))?;
    let (key, token) = match (args.key, args.token) {
        (Some(k), _) => (Some(k), None),
        (None, Some(t)) => (None, Some(t)),
        (None, None) => match env("SHAKENFIST_KEY") {
            Some(k) => (Some(k), None),
            None => match env("SHAKENFIST_TOKEN") {
                Some(t) => (None, Some(t)),
                None => bail!("give --key KEY or --token TOKEN (or set SHAKENFIST_KEY)"),
            },
        },
    };
    // A relative CA file is kept absolute, so that sf works from any directory.
    let ca_file = args
        .ca_file
        .or_else(|| env(sf_client::CA_FILE_ENV))
        .or(existing.ca_file)
        .map(|f| std::path::absolute(&f).map_or(f, |p| p.display().to_string()));
    if let Some(k) = &key {
        sf_client::authenticate_with_ca(
            &url,
            &namespace,
            k,
            ca_file.as_deref().map(std::path::Path::new),
        )
        .await
        .context("checking the key")?;
    }
    let config = FileConfig {
        api_url: Some(url.trim_end_matches('/').to_string()),
        namespace: Some(namespace.clone()),
        key,
        token,
        ca_file,
    };
    config::save(&path, &config)?;
    emit(&format!(
        "Logged in to {} as namespace {namespace}; configuration written to {}\n",
        url.trim_end_matches('/'),
        path.display()
    ));
    Ok(0)
}

fn completion(shell: Shell) -> anyhow::Result<i32> {
    use clap::CommandFactory;
    let mut command = Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, "sf", &mut out);
    emit(&String::from_utf8_lossy(&out));
    Ok(0)
}

fn plugin_list() -> anyhow::Result<i32> {
    let found = plugin::list();
    if found.is_empty() {
        emit("No plugins (sf-* executables) on PATH.\n");
        return Ok(0);
    }
    let mut table = Table::new(&["PLUGIN", "PATH"]);
    for f in found {
        let path = if f.shadowed {
            format!(
                "{} (shadowed by an earlier sf-{})",
                f.path.display(),
                f.name
            )
        } else {
            f.path.display().to_string()
        };
        table.push(vec![f.name, path]);
    }
    emit(&table.render());
    Ok(0)
}

async fn external(ns: Option<&str>, args: Vec<OsString>) -> anyhow::Result<i32> {
    let Some((name, rest)) = args.split_first() else {
        bail!("no command given; see `sf --help`");
    };
    let name = name.to_string_lossy().into_owned();
    if plugin::find(&name).is_none() {
        return Err(plugin::PluginError::NotFound { name }.into());
    }
    let c = settings()?;
    let mut connection = plugin::Connection {
        url: c.api_url.clone(),
        namespace: ns.map(str::to_string).or(c.namespace.clone()),
        token: c.token.clone(),
        ca_file: c.ca_file.clone(),
    };
    if c.api_url.is_some() && c.namespace.is_some() && c.key.is_some() {
        // A plugin may not need the API: run it anyway, without a token.
        match connect(ns).await {
            Ok(ctx) => connection.token = Some(ctx.client.token()),
            Err(e) => {
                eprintln!("warning: not connected ({e:#}); running sf-{name} without a token")
            }
        }
    }
    Ok(plugin::run(&name, rest, &connection)?)
}

async fn apply_cmd(ctx: &Ctx, args: ApplyArgs) -> anyhow::Result<i32> {
    // Everything is parsed and validated before anything is sent.
    let docs = manifest::load(&args.files.files, &ctx.namespace)?;
    let mut targets = Vec::new();
    for doc in &docs {
        let outcome = apply::apply_one(&ctx.rest, doc).await?;
        let word = ctx.colour.state(outcome.word());
        emit(&format!("{} {word}\n", doc.display()));
        targets.push(Target {
            kind: doc.kind,
            namespace: doc.namespace.clone(),
            name: doc.name.clone(),
        });
    }
    if args.wait.wait {
        apply::wait_all(
            &ctx.rest,
            &targets,
            false,
            Duration::from_secs(args.wait.timeout),
        )
        .await?;
    }
    Ok(0)
}

async fn delete_cmd(ctx: &Ctx, args: DeleteArgs) -> anyhow::Result<i32> {
    let targets: Vec<Target> = if !args.files.is_empty() {
        let docs = manifest::load(&args.files, &ctx.namespace)?;
        // Reverse order: instances before the networks they use.
        docs.iter()
            .rev()
            .map(|d| Target {
                kind: d.kind,
                namespace: d.namespace.clone(),
                name: d.name.clone(),
            })
            .collect()
    } else {
        let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
            bail!("give -f FILE or KIND NAME");
        };
        vec![Target {
            kind: kind_of(kind)?,
            namespace: ctx.namespace.clone(),
            name: name.clone(),
        }]
    };
    let mut code = 0;
    let mut pending = Vec::new();
    for t in targets {
        let display = format!("{}/{}", t.kind.singular(), t.name);
        let existed = ctx
            .rest
            .delete(&t.kind.path(&t.namespace, &t.name))
            .await
            .with_context(|| display.clone())?;
        if existed {
            emit(&format!("{display} deleted\n"));
            pending.push(t);
        } else if args.ignore_not_found {
            emit(&format!("{display} not found\n"));
        } else {
            eprintln!("error: {display} not found");
            code = 1;
        }
    }
    if args.wait.wait && !pending.is_empty() {
        apply::wait_all(
            &ctx.rest,
            &pending,
            true,
            Duration::from_secs(args.wait.timeout),
        )
        .await?;
    }
    Ok(code)
}

fn list_path(kind: &KindInfo, ctx: &Ctx, all: bool) -> String {
    if all || !kind.namespaced {
        kind.collection_path(None)
    } else {
        kind.collection_path(Some(&ctx.namespace))
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

async fn get_cmd(ctx: &Ctx, args: GetArgs) -> anyhow::Result<i32> {
    let kind = kind_of(&args.kind)?;
    let style = TableStyle {
        wide: args.output == Output::Wide,
        namespace: args.all_namespaces,
    };
    if args.watch {
        return watch(ctx, kind, &args, style).await;
    }
    let now = Utc::now();
    let objects: Vec<Value> = match &args.name {
        Some(name) => {
            let object = ctx
                .rest
                .get(&kind.path(&ctx.namespace, name))
                .await
                .with_context(|| format!("{}/{name}", kind.singular()))?;
            if matches!(args.output, Output::Json) {
                emit(&format!("{}\n", serde_json::to_string_pretty(&object)?));
                return Ok(0);
            }
            vec![object]
        }
        None => {
            let mut path = list_path(kind, ctx, args.all_namespaces);
            if let Some(sel) = &args.selector {
                path.push_str(&format!("?labelSelector={}", encode(sel)));
            }
            let list = ctx.rest.get(&path).await?;
            if matches!(args.output, Output::Json) {
                emit(&format!("{}\n", serde_json::to_string_pretty(&list)?));
                return Ok(0);
            }
            let mut items = list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            items.sort_by(|a, b| {
                let key = |o: &Value| {
                    (
                        output::cell(o.pointer("/metadata/namespace")),
                        output::cell(o.pointer("/metadata/name")),
                    )
                };
                key(a).cmp(&key(b))
            });
            items
        }
    };
    match args.output {
        Output::Yaml => emit(&output::to_yaml(&objects)?),
        Output::Json => {}
        Output::Table | Output::Wide => {
            if objects.is_empty() {
                eprintln!(
                    "No {} found{}.",
                    kind.plural,
                    if kind.namespaced && !args.all_namespaces {
                        format!(" in namespace {}", ctx.namespace)
                    } else {
                        String::new()
                    }
                );
                return Ok(0);
            }
            let headers = output::headers(kind, style);
            let mut table = Table {
                headers: headers.iter().map(|h| ctx.colour.bold(h)).collect(),
                rows: Vec::new(),
            };
            for o in &objects {
                table.push(output::row(kind, o, style, now, ctx.colour));
            }
            emit(&table.render());
        }
    }
    Ok(0)
}

/// `get -w`: ADDED for what exists, then every change; re-opens the watch from the
/// last resourceVersion seen when the stream ends or the connection drops.
async fn watch(
    ctx: &Ctx,
    kind: &'static KindInfo,
    args: &GetArgs,
    style: TableStyle,
) -> anyhow::Result<i32> {
    let base = list_path(kind, ctx, args.all_namespaces);
    let mut resource_version: Option<String> = None;
    let mut printed_header = false;
    let mut failures = 0u32;
    loop {
        let mut query = vec![
            "watch=true".to_string(),
            "allowWatchBookmarks=true".to_string(),
        ];
        if let Some(rv) = &resource_version {
            query.push(format!("resourceVersion={}", encode(rv)));
        }
        if let Some(name) = &args.name {
            query.push(format!(
                "fieldSelector={}",
                encode(&format!("metadata.name={name}"))
            ));
        }
        if let Some(sel) = &args.selector {
            query.push(format!("labelSelector={}", encode(sel)));
        }
        let path = format!("{base}?{}", query.join("&"));
        let result = ctx
            .rest
            .watch(&path, |event| {
                let kind_of_event = event
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if kind_of_event == "ERROR" {
                    if event.pointer("/object/code").and_then(Value::as_u64) == Some(410) {
                        // Too old: start again from the current state.
                        resource_version = None;
                    } else {
                        eprintln!("watch error: {}", event["object"]);
                    }
                    return ControlFlow::Break(());
                }
                if let Some(rv) = event
                    .pointer("/object/metadata/resourceVersion")
                    .and_then(Value::as_str)
                {
                    resource_version = Some(rv.to_string());
                }
                if kind_of_event == "BOOKMARK" {
                    return ControlFlow::Continue(());
                }
                match args.output {
                    Output::Json => emit(&format!(
                        "{}\n",
                        serde_json::to_string(&event).unwrap_or_default()
                    )),
                    Output::Yaml => {
                        let text =
                            output::to_yaml(std::slice::from_ref(&event)).unwrap_or_default();
                        emit(&format!("---\n{text}"));
                    }
                    Output::Table | Output::Wide => {
                        let mut headers = vec!["EVENT".to_string()];
                        headers.extend(output::headers(kind, style));
                        let mut row = vec![kind_of_event.clone()];
                        row.extend(output::row(
                            kind,
                            &event["object"],
                            style,
                            Utc::now(),
                            ctx.colour,
                        ));
                        let widths: Vec<usize> = headers.iter().map(|h| h.len().max(12)).collect();
                        if !printed_header {
                            printed_header = true;
                            emit(&format!("{}\n", Table::line(&headers, &widths)));
                        }
                        emit(&format!("{}\n", Table::line(&row, &widths)));
                    }
                }
                ControlFlow::Continue(())
            })
            .await;
        match result {
            Ok(_) => failures = 0,
            Err(e) if e.code().is_some_and(|c| c != 503 && c != 500) => return Err(e.into()),
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures > 1 {
                    eprintln!("watch interrupted ({e}); reconnecting");
                }
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(10)))).await;
            }
        }
    }
}

async fn describe(ctx: &Ctx, args: KindName) -> anyhow::Result<i32> {
    let kind = kind_of(&args.kind)?;
    let display = format!("{}/{}", kind.singular(), args.name);
    let object = ctx
        .rest
        .get(&kind.path(&ctx.namespace, &args.name))
        .await
        .with_context(|| display.clone())?;
    let mut out = String::new();
    let meta = |f: &str| output::cell(object.pointer(&format!("/metadata/{f}")));
    out.push_str(&format!("Name:         {}\n", meta("name")));
    if kind.namespaced {
        out.push_str(&format!("Namespace:    {}\n", meta("namespace")));
    }
    out.push_str(&format!("Kind:         {}\n", kind.kind));
    out.push_str(&format!("UID:          {}\n", meta("uid")));
    out.push_str(&format!("Created:      {}\n", meta("creationTimestamp")));
    out.push_str(&format!("Generation:   {}\n", meta("generation")));
    out.push_str(&format!("Version:      {}\n", meta("resourceVersion")));
    if let Some(t) = object
        .pointer("/metadata/deletionTimestamp")
        .filter(|t| !t.is_null())
    {
        out.push_str(&format!("Deleting:     since {}\n", output::cell(Some(t))));
    }
    for field in ["labels", "annotations"] {
        let map = object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "<none>".into());
        let title = format!("{}{}:", field[..1].to_uppercase(), &field[1..]);
        out.push_str(&format!("{title:<14}{map}\n"));
    }
    out.push_str("Spec:\n");
    out.push_str(&indent(
        &output::to_yaml(&[object.get("spec").cloned().unwrap_or(json!({}))])?,
        2,
    ));
    let mut status = object.get("status").cloned().unwrap_or(json!({}));
    let conditions = status
        .as_object_mut()
        .and_then(|s| s.remove("conditions"))
        .and_then(|c| c.as_array().cloned())
        .unwrap_or_default();
    out.push_str("Status:\n");
    if status.as_object().is_none_or(serde_json::Map::is_empty) {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&indent(&output::to_yaml(&[status])?, 2));
    }
    out.push_str("Conditions:\n");
    if conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut t = Table::new(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]);
        let now = Utc::now();
        for c in &conditions {
            let f = |k: &str| output::cell(c.get(k));
            let since = c
                .get("lastTransitionTime")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(
                    || "<unknown>".into(),
                    |t| output::short_duration((now - t.with_timezone(&Utc)).num_seconds()),
                );
            t.push(vec![
                f("type"),
                ctx.colour.state(&f("status")),
                f("reason"),
                since,
                c.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ]);
        }
        out.push_str(&indent(&t.render(), 2));
    }
    // Operations targeting it (recent first).
    if kind.namespaced && kind.kind != "ClusterOperation" {
        out.push_str("Operations:\n");
        let ops_kind = kind_of("clusteroperations")?;
        match ctx
            .rest
            .get(&ops_kind.collection_path(Some(&ctx.namespace)))
            .await
        {
            Ok(list) => {
                let mut ops: Vec<Value> = list
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| {
                        o.pointer("/spec/target/kind").and_then(Value::as_str) == Some(kind.kind)
                            && o.pointer("/spec/target/name").and_then(Value::as_str)
                                == Some(args.name.as_str())
                    })
                    .collect();
                ops.sort_by_key(|o| output::cell(o.pointer("/metadata/creationTimestamp")));
                ops.reverse();
                if ops.is_empty() {
                    out.push_str("  <none>\n");
                } else {
                    let mut t = Table::new(&["NAME", "TYPE", "STATE", "ATTEMPTS", "AGE"]);
                    let now = Utc::now();
                    for o in ops.iter().take(10) {
                        t.push(vec![
                            output::cell(o.pointer("/metadata/name")),
                            output::cell(o.pointer("/spec/operationType")),
                            ctx.colour.state(&output::cell(o.pointer("/status/state"))),
                            output::cell(o.pointer("/status/attempts")),
                            output::age(o, now),
                        ]);
                    }
                    out.push_str(&indent(&t.render(), 2));
                }
            }
            Err(e) => out.push_str(&format!("  <not available: {e}>\n")),
        }
    }
    out.push_str("Events:\n");
    match fetch_events(ctx, kind, &args.name, None, Some(10)).await {
        Ok(events) if events.is_empty() => out.push_str("  <none>\n"),
        Ok(events) => out.push_str(&indent(&events_table(&events).render(), 2)),
        Err(e) => out.push_str(&format!("  <not available: {e}>\n")),
    }
    emit(&out);
    Ok(0)
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

async fn fetch_events(
    ctx: &Ctx,
    kind: &KindInfo,
    name: &str,
    event_type: Option<&str>,
    limit: Option<u32>,
) -> Result<Vec<Value>, crate::rest::RestError> {
    let mut query = Vec::new();
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    if let Some(t) = event_type {
        query.push(format!("type={}", encode(t)));
    }
    let mut path = format!("{}/events", kind.path(&ctx.namespace, name));
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let v = ctx.rest.get(&path).await?;
    Ok(match v {
        Value::Array(items) => items,
        other => other
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    })
}

fn event_time(v: Option<&Value>) -> String {
    match v {
        Some(Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| {
                DateTime::<Utc>::from_timestamp(secs.trunc() as i64, (secs.fract() * 1e9) as u32)
            })
            .map_or_else(
                || n.to_string(),
                |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
            ),
        other => output::cell(other),
    }
}

/// The events table (v0.8 rows).
pub fn events_table(events: &[Value]) -> Table {
    let mut t = Table::new(&["TIMESTAMP", "TYPE", "NODE", "DURATION", "MESSAGE"]);
    for e in events {
        let duration = match e.get("duration") {
            Some(Value::Number(n)) => n.to_string(),
            _ => "-".into(),
        };
        let mut message = e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Some(extra) = e.get("extra").filter(|x| !x.is_null() && *x != &json!({})) {
            message.push_str(&format!(" {extra}"));
        }
        t.push(vec![
            event_time(e.get("timestamp")),
            output::cell(e.get("event_type")),
            output::cell(e.get("fqdn")),
            duration,
            message,
        ]);
    }
    t
}

async fn events(ctx: &Ctx, args: EventsArgs) -> anyhow::Result<i32> {
    let kind = kind_of(&args.kind)?;
    let events = fetch_events(
        ctx,
        kind,
        &args.name,
        args.event_type.as_deref(),
        args.limit,
    )
    .await
    .with_context(|| format!("events of {}/{}", kind.singular(), args.name))?;
    match args.output {
        DocOutput::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&events)?)),
        DocOutput::Yaml => emit(&serde_norway::to_string(&events)?),
        DocOutput::Table => {
            if events.is_empty() {
                eprintln!("No events.");
            } else {
                emit(&events_table(&events).render());
            }
        }
    }
    Ok(0)
}

/// One action of a plan as a line: its name then its fields.
pub fn action_line(action: &Value) -> String {
    let Some(map) = action.as_object() else {
        return action.to_string();
    };
    let name = map
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("action")
        .to_string();
    let fields: Vec<String> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "action")
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    if fields.is_empty() {
        name
    } else {
        format!("{name} {}", fields.join(" "))
    }
}

async fn plan(ctx: &Ctx, args: PlanArgs) -> anyhow::Result<i32> {
    let docs = manifest::load(&args.files.files, &ctx.namespace)?;
    let objects: Vec<Value> = docs.iter().map(apply::create_body).collect();
    let mut by_namespace: Vec<(String, Vec<Value>)> = Vec::new();
    for (doc, object) in docs.iter().zip(objects) {
        let ns = if doc.kind.namespaced {
            doc.namespace.clone()
        } else {
            ctx.namespace.clone()
        };
        match by_namespace.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, list)) => list.push(object),
            None => by_namespace.push((ns, vec![object])),
        }
    }
    let mut plans = Vec::new();
    for (ns, objects) in by_namespace {
        let answer = ctx
            .rest
            .post(
                &format!("{API_PREFIX}/namespaces/{ns}/plan"),
                &json!({"objects": objects, "delete": args.delete}),
            )
            .await
            .context("planning")?;
        plans.extend(
            answer
                .get("plans")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
    }
    match args.output {
        DocOutput::Json => {
            emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(&json!({"plans": plans}))?
            ));
        }
        DocOutput::Yaml => emit(&serde_norway::to_string(&json!({"plans": plans}))?),
        DocOutput::Table => emit(&render_plan(&plans, ctx.colour)),
    }
    Ok(0)
}

/// The human form of a plan answer.
pub fn render_plan(plans: &[Value], colour: Colour) -> String {
    let mut out = String::new();
    let mut counts = std::collections::BTreeMap::new();
    for p in plans {
        let kind = p.get("kind").and_then(Value::as_str).unwrap_or("?");
        let name = p.get("name").and_then(Value::as_str).unwrap_or("?");
        let change = p.get("change").and_then(Value::as_str).unwrap_or("?");
        *counts.entry(change.to_string()).or_insert(0u32) += 1;
        let symbol = match change {
            "create" => "+",
            "update" => "~",
            "delete" => "-",
            _ => "=",
        };
        let word = match (colour.0, change) {
            (true, "create") => format!("\x1b[32m{change}\x1b[0m"),
            (true, "update") => format!("\x1b[33m{change}\x1b[0m"),
            (true, "delete") => format!("\x1b[31m{change}\x1b[0m"),
            _ => change.to_string(),
        };
        out.push_str(&format!(
            "{symbol} {}/{name}: {word}\n",
            kind.to_ascii_lowercase()
        ));
        for action in p
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("    {}\n", action_line(action)));
        }
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    out.push_str(&format!(
        "Plan: {} to create, {} to update, {} to delete, {} unchanged.\n",
        n("create"),
        n("update"),
        n("delete"),
        n("unchanged")
    ));
    out
}

fn random_key() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a random key")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn names_of(v: &Value, fields: &[&str]) -> Vec<String> {
    let items = match v {
        Value::Array(items) => items.clone(),
        other => other
            .get("items")
            .or_else(|| other.get("namespaces"))
            .or_else(|| other.get("keys"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            other => fields
                .iter()
                .find_map(|f| other.get(*f).and_then(Value::as_str))
                .map_or_else(|| other.to_string(), str::to_string),
        })
        .collect()
}

async fn namespace_cmd(ctx: &Ctx, c: NamespaceCommand) -> anyhow::Result<i32> {
    match c {
        NamespaceCommand::Create {
            name,
            key_name,
            key,
        } => {
            let mut body = json!({"namespace": name});
            let mut printed_key = None;
            if let Some(key_name) = key_name {
                let key = match key {
                    Some(k) => k,
                    None => random_key()?,
                };
                body["key_name"] = json!(key_name);
                body["key"] = json!(key);
                printed_key = Some(key);
            }
            ctx.rest
                .post("/auth/namespaces", &body)
                .await
                .with_context(|| format!("creating namespace {name}"))?;
            emit(&format!("namespace/{name} created\n"));
            if let Some(k) = printed_key {
                eprintln!("The key is shown once; store it now:");
                emit(&format!("{k}\n"));
            }
        }
        NamespaceCommand::List { output } => {
            let v = ctx.rest.get("/auth/namespaces").await?;
            match output {
                DocOutput::Table => {
                    let mut names = names_of(&v, &["name", "namespace"]);
                    names.sort();
                    let mut t = Table::new(&["NAMESPACE"]);
                    for n in names {
                        t.push(vec![n]);
                    }
                    emit(&t.render());
                }
                other => print_doc(&v, other)?,
            }
        }
        NamespaceCommand::Delete { name } => {
            ctx.rest
                .json(Method::DELETE, &format!("/auth/namespaces/{name}"), None)
                .await
                .with_context(|| format!("deleting namespace {name}"))?;
            emit(&format!("namespace/{name} deleted\n"));
        }
    }
    Ok(0)
}

async fn key_cmd(ctx: &Ctx, c: KeyCommand) -> anyhow::Result<i32> {
    let ns = &ctx.namespace;
    match c {
        KeyCommand::Create { name, key } => {
            let key = match key {
                Some(k) => k,
                None => random_key()?,
            };
            ctx.rest
                .post(
                    &format!("/auth/namespaces/{ns}/keys"),
                    &json!({"key_name": name, "key": key}),
                )
                .await
                .with_context(|| format!("creating key {name} in {ns}"))?;
            eprintln!("key/{name} created in namespace {ns}; the key is shown once:");
            emit(&format!("{key}\n"));
        }
        KeyCommand::List { output } => {
            let v = ctx.rest.get(&format!("/auth/namespaces/{ns}/keys")).await?;
            match output {
                DocOutput::Table => {
                    let mut names = names_of(&v, &["key_name", "name"]);
                    names.sort();
                    let mut t = Table::new(&["KEY"]);
                    for n in names {
                        t.push(vec![n]);
                    }
                    emit(&t.render());
                }
                other => print_doc(&v, other)?,
            }
        }
        KeyCommand::Delete { name } => {
            ctx.rest
                .json(
                    Method::DELETE,
                    &format!("/auth/namespaces/{ns}/keys/{name}"),
                    None,
                )
                .await
                .with_context(|| format!("deleting key {name} in {ns}"))?;
            emit(&format!("key/{name} deleted\n"));
        }
    }
    Ok(0)
}

/// Waits until an instance's observed power state is `want`.
async fn wait_power(ctx: &Ctx, name: &str, want: &str, timeout: u64) -> anyhow::Result<()> {
    let kind = kind_of("instance")?;
    let path = kind.path(&ctx.namespace, name);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut last = String::from("<none>");
    loop {
        if let Ok(object) = ctx.rest.get(&path).await {
            let power = output::cell(object.pointer("/status/powerState"));
            if power == want {
                return Ok(());
            }
            if let apply::Readiness::Failed(m) = apply::readiness(&object) {
                bail!("instance/{name}: failed: {m}");
            }
            last = power;
        }
        if Instant::now() >= deadline {
            bail!("instance/{name}: power state is {last}, not {want}, after {timeout}s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until an operation completes; returns it.
async fn wait_operation(ctx: &Ctx, op: &Value, timeout: u64) -> anyhow::Result<Value> {
    let kind = kind_of("clusteroperation")?;
    let name = op
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the operation has no name: {op}"))?;
    let namespace = op
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(&ctx.namespace);
    let path = kind.path(namespace, name);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let mut state = String::from("queued");
    loop {
        if let Ok(current) = ctx.rest.get(&path).await {
            state = output::cell(current.pointer("/status/state"));
            match state.as_str() {
                "complete" => return Ok(current),
                "error" | "abort" => {
                    let report = current
                        .pointer("/status/errorReport")
                        .map(|r| {
                            format!(
                                "{}: {}",
                                output::cell(r.get("code")),
                                output::cell(r.get("message"))
                            )
                        })
                        .unwrap_or_else(|| state.clone());
                    bail!("clusteroperation/{name} ended in {state}: {report}");
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!("clusteroperation/{name} is still {state} after {timeout}s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn set_power(
    ctx: &Ctx,
    name: &str,
    desired: &str,
    observed: &str,
    wait: &crate::cli::VerbWait,
) -> anyhow::Result<i32> {
    let kind = kind_of("instance")?;
    ctx.rest
        .merge_patch(
            &kind.path(&ctx.namespace, name),
            &json!({"spec": {"powerState": desired}}),
        )
        .await
        .with_context(|| format!("instance/{name}"))?;
    emit(&format!("instance/{name} powerState={desired}\n"));
    if wait.wait {
        wait_power(ctx, name, observed, wait.timeout).await?;
        emit(&format!("instance/{name} is {observed}\n"));
    }
    Ok(0)
}

async fn instance_cmd(ctx: &Ctx, c: InstanceCommand) -> anyhow::Result<i32> {
    let kind = kind_of("instance")?;
    match c {
        InstanceCommand::Poweron { name, wait } => {
            set_power(ctx, &name, "on", "running", &wait).await
        }
        InstanceCommand::Poweroff { name, wait } => {
            set_power(ctx, &name, "off", "off", &wait).await
        }
        InstanceCommand::Pause { name, wait } => {
            set_power(ctx, &name, "paused", "paused", &wait).await
        }
        InstanceCommand::Unpause { name, wait } => {
            set_power(ctx, &name, "on", "running", &wait).await
        }
        InstanceCommand::Reboot { name, hard, wait } => {
            let op = ctx
                .rest
                .post(
                    &format!("{}/reboot", kind.path(&ctx.namespace, &name)),
                    &json!({"hard": hard}),
                )
                .await
                .with_context(|| format!("rebooting instance/{name}"))?;
            emit(&format!(
                "clusteroperation/{} created\n",
                output::cell(op.pointer("/metadata/name"))
            ));
            if wait.wait {
                wait_operation(ctx, &op, wait.timeout).await?;
                emit(&format!("instance/{name} rebooted\n"));
            }
            Ok(0)
        }
        InstanceCommand::Snapshot {
            name,
            device,
            all,
            max_versions,
            wait,
        } => {
            let mut body = json!({"all": all});
            if let Some(d) = device {
                body["device"] = json!(d);
            }
            if let Some(m) = max_versions {
                body["maxVersions"] = json!(m);
            }
            let op = ctx
                .rest
                .post(
                    &format!("{}/snapshot", kind.path(&ctx.namespace, &name)),
                    &body,
                )
                .await
                .with_context(|| format!("snapshot of instance/{name}"))?;
            emit(&format!(
                "clusteroperation/{} created\n",
                output::cell(op.pointer("/metadata/name"))
            ));
            if wait.wait {
                let done = wait_operation(ctx, &op, wait.timeout).await?;
                let taken = done
                    .pointer("/status/result/snapshots")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for t in &taken {
                    emit(&format!(
                        "{}: artifact/{} blob {} ({} bytes)\n",
                        output::cell(t.get("device")),
                        output::cell(t.get("artifact")),
                        output::cell(t.get("blob")),
                        output::cell(t.get("size"))
                    ));
                }
            }
            Ok(0)
        }
        InstanceCommand::Screenshot {
            name,
            output: file,
            timeout,
        } => {
            let op = ctx
                .rest
                .post(
                    &format!("{}/screenshot", kind.path(&ctx.namespace, &name)),
                    &json!({}),
                )
                .await
                .with_context(|| format!("screenshot of instance/{name}"))?;
            let done = wait_operation(ctx, &op, timeout).await?;
            let blob = done
                .pointer("/status/result/blob")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("the screenshot operation has no result blob"))?;
            let answer = ctx
                .rest
                .send(
                    Method::GET,
                    &format!("{API_PREFIX}/blobs/{blob}/data"),
                    None,
                )
                .await?;
            if !answer.status.is_success() {
                return Err(crate::rest::error_from(
                    answer.status.as_u16(),
                    &answer.body,
                ))
                .with_context(|| format!("downloading blob {blob}"));
            }
            std::fs::write(&file, &answer.body)
                .with_context(|| format!("writing {}", file.display()))?;
            emit(&format!(
                "{} bytes ({}) written to {}\n",
                answer.body.len(),
                answer.content_type.unwrap_or_else(|| "unknown type".into()),
                file.display()
            ));
            Ok(0)
        }
        InstanceCommand::AddInterface {
            name,
            network,
            address,
            model,
            interface_name,
            wait,
        } => {
            let iface = kind_of("networkinterface")?;
            let mut metadata = json!({"namespace": ctx.namespace});
            match interface_name {
                Some(n) => metadata["name"] = json!(n),
                None => metadata["generateName"] = json!(format!("{name}-")),
            }
            let mut spec = json!({"instance": name, "network": network});
            if let Some(a) = address {
                spec["address"] = json!(a);
            }
            if let Some(m) = model {
                spec["model"] = json!(m);
            }
            let created = ctx
                .rest
                .post(
                    &iface.collection_path(Some(&ctx.namespace)),
                    &json!({
                        "apiVersion": kinds::API_VERSION,
                        "kind": "NetworkInterface",
                        "metadata": metadata,
                        "spec": spec,
                    }),
                )
                .await
                .with_context(|| format!("adding an interface to instance/{name}"))?;
            let iface_name = output::cell(created.pointer("/metadata/name"));
            emit(&format!("networkinterface/{iface_name} created\n"));
            if wait.wait {
                apply::wait_all(
                    &ctx.rest,
                    &[Target {
                        kind: iface,
                        namespace: ctx.namespace.clone(),
                        name: iface_name,
                    }],
                    false,
                    Duration::from_secs(wait.timeout),
                )
                .await?;
            }
            Ok(0)
        }
    }
}

/// One row of `sf network addresses`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddressRow {
    /// The address.
    pub address: String,
    /// Why it is held.
    #[serde(rename = "type")]
    pub type_: String,
    /// Who holds it (`kind/name`), if anyone.
    pub user: Option<String>,
    /// Free text.
    pub comment: Option<String>,
}

/// The rows for `network` from IPAMLease objects, sorted numerically.
pub fn address_rows(leases: &[Value], network: &str) -> Vec<AddressRow> {
    let mut rows: Vec<AddressRow> = leases
        .iter()
        .filter(|l| l.pointer("/spec/network").and_then(Value::as_str) == Some(network))
        .map(|l| {
            let halo = l.pointer("/status/phase").and_then(Value::as_str) == Some("halo");
            let user = l.pointer("/spec/owner").filter(|o| !o.is_null()).map(|o| {
                let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
                let name = o.get("name").and_then(Value::as_str).unwrap_or("");
                format!("{}/{name}", kind.to_ascii_lowercase())
            });
            AddressRow {
                address: output::cell(l.pointer("/spec/address")),
                type_: if halo {
                    "deletion-halo".into()
                } else {
                    output::cell(l.pointer("/spec/reservationType"))
                },
                user,
                comment: l
                    .pointer("/spec/comment")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }
        })
        .collect();
    output::sort_addresses(&mut rows, |r| r.address.as_str());
    rows
}

/// The table of address rows (a null user or comment prints `-`).
pub fn addresses_table(rows: &[AddressRow]) -> Table {
    let mut t = Table::new(&["ADDRESS", "TYPE", "USER", "COMMENT"]);
    for r in rows {
        t.push(vec![
            r.address.clone(),
            r.type_.clone(),
            r.user.clone().unwrap_or_else(|| "-".into()),
            r.comment
                .clone()
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

async fn addresses(ctx: &Ctx, network: &str, output_format: DocOutput) -> anyhow::Result<i32> {
    let net = kind_of("network")?;
    ctx.rest
        .get(&net.path(&ctx.namespace, network))
        .await
        .with_context(|| format!("network/{network}"))?;
    let leases = kind_of("ipamleases")?;
    let list = ctx
        .rest
        .get(&leases.collection_path(Some(&ctx.namespace)))
        .await?;
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let rows = address_rows(&items, network);
    match output_format {
        DocOutput::Table => emit(&addresses_table(&rows).render()),
        DocOutput::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&rows)?)),
        DocOutput::Yaml => emit(&serde_norway::to_string(&rows)?),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_rows_sort_numerically_and_print_null_users_as_dash() {
        let lease = |addr: &str, ty: &str, owner: Value, phase: &str| {
            json!({"spec": {"network": "web", "address": addr, "reservationType": ty, "owner": owner},
                   "status": {"phase": phase}})
        };
        let leases = vec![
            lease(
                "10.0.0.10",
                "instance",
                json!({"kind": "NetworkInterface", "name": "a-0"}),
                "held",
            ),
            lease("10.0.0.2", "instance", Value::Null, "halo"),
            lease("10.0.0.255", "broadcast", Value::Null, "held"),
            lease(
                "10.0.0.0",
                "network",
                json!({"kind": "Network", "name": "web"}),
                "held",
            ),
            json!({"spec": {"network": "other", "address": "10.1.0.1"}}),
        ];
        let rows = address_rows(&leases, "web");
        let text = addresses_table(&rows).render();
        assert_eq!(
            text,
            "ADDRESS      TYPE            USER                   COMMENT\n\
             10.0.0.0     network         network/web            -\n\
             10.0.0.2     deletion-halo   -                      -\n\
             10.0.0.10    instance        networkinterface/a-0   -\n\
             10.0.0.255   broadcast       -                      -\n"
        );
    }

    #[test]
    fn plans_render_with_symbols_and_a_summary() {
        let plans = vec![
            json!({"kind": "Instance", "name": "web-1", "change": "create",
                   "actions": [{"action": "ensureFinalizer"}, {"action": "schedule", "node": "hv-1"}]}),
            json!({"kind": "Network", "name": "web", "change": "unchanged", "actions": []}),
        ];
        assert_eq!(
            render_plan(&plans, Colour(false)),
            "+ instance/web-1: create\n    ensureFinalizer\n    schedule node=hv-1\n= network/web: unchanged\nPlan: 1 to create, 0 to update, 0 to delete, 1 unchanged.\n"
        );
    }

    #[test]
    fn event_rows_format_timestamps() {
        let t = events_table(&[
            json!({"timestamp": 1_700_000_000.5, "event_type": "audit", "fqdn": "hv-1", "message": "created", "duration": null}),
        ]);
        assert_eq!(
            t.rows[0],
            ["2023-11-14 22:13:20", "audit", "hv-1", "-", "created"]
        );
    }

    #[test]
    fn random_keys_are_long_and_differ() {
        let a = random_key().expect("key");
        let b = random_key().expect("key");
        assert_eq!(a.len(), 48);
        assert_ne!(a, b);
    }
}
