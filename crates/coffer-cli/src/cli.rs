use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Coffer: secrets and configuration, encrypted end to end.
#[derive(Debug, Parser)]
#[command(name = "coffer", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Server address (default: the one saved at login, else https://127.0.0.1:8200).
    #[arg(long, global = true, env = "COFFER_ADDR")]
    pub addr: Option<String>,
    /// CA certificate (PEM) to trust for the server; pins Coffer's internal CA.
    #[arg(long, global = true, env = "COFFER_CACERT")]
    pub ca_cert: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Server(ServerArgs),
    /// Initialise, unseal, seal and inspect the server.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Log in with a username and password; the token is saved for later commands.
    Login(LoginArgs),
    /// End the saved session.
    Logout,
    /// Show who the saved session belongs to.
    Whoami,
    /// Projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Environments of a project.
    #[command(subcommand)]
    Env(EnvCmd),
    /// Parameters and secrets.
    #[command(subcommand)]
    Param(ParamCmd),
    /// Run a program with an environment's parameters as environment variables.
    Run(RunArgs),
    /// Print an environment's parameters in a file format.
    Export(ExportArgs),
    /// The audit log: list, export, verify, write customer events.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Apply pending PostgreSQL migrations, as the schema owner.
    Migrate {
        /// `postgres://owner@host/db` (default: COFFER_DATABASE_URL).
        #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Organisations: list, switch, members, invitations, roles.
    #[command(subcommand)]
    Org(OrgCmd),
    /// API keys for automation.
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// Two-factor authentication (TOTP).
    #[command(subcommand)]
    Mfa(MfaCmd),
    /// Your sessions.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Your account: password and e-mail address.
    #[command(subcommand)]
    Account(AccountCmd),
    /// The organisation's encryption key: status and rotation.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Measure read and write throughput and latency against a running server.
    Bench(BenchArgs),
    /// Fill a fresh database with many organisations and values for the scale benchmark
    /// (writes straight to the database, not through a server; see docs/benchmarks.md).
    BenchLoad(BenchLoadArgs),
    /// Print a shell completion script (e.g. `coffer completion bash >
    /// ~/.local/share/bash-completion/completions/coffer`).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write manual pages for every command (coffer.1, coffer-param-set.1, …).
    Man {
        /// The directory to write them into (created if missing).
        #[arg(long, default_value = "man")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Key terms, values under each, and the progress of the latest rotation.
    Status,
    /// Rotate: new values use a new term at once; stored values are rewrapped in the
    /// background.
    Rotate {
        /// Wait for the rewrap to finish, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Wrap the organisation's key with its own key instead of the root key (Owners):
    /// `awskms:<key id, ARN or alias>` or `pkcs11:<key label>`. Disabling that key later
    /// makes the organisation's data unreadable until it is enabled again.
    AttachExternal {
        /// The key: `awskms:<key id, ARN or alias>` or `pkcs11:<key label>`.
        key: String,
        /// Wait for every value to move under the new term.
        #[arg(long)]
        wait: bool,
    },
    /// Go back to the root key (Owners). Keep the external key enabled until
    /// `coffer key status` shows no term wrapped by it.
    DetachExternal {
        /// Wait for every value to move back under the root key.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Dev mode: root key in a 0600 file in the data directory, automatic unseal, and a
    /// bootstrap account printed on first start. Never for production.
    #[arg(long)]
    pub dev: bool,
    /// TOML configuration file.
    #[arg(long, env = "COFFER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides the file and COFFER_LISTEN).
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory (overrides the file and COFFER_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Initialise a new server: prints the Shamir shares of the root key and the first
    /// account's password, once.
    Init {
        /// How many unseal shares to issue (give one to each key holder).
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// How many of them unseal the server.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
    },
    /// Submit one unseal share (prompted without echo when not given).
    Unseal {
        /// The share (prefer the prompt: a share in the command line shows in the shell's
        /// history).
        share: Option<String>,
        /// Discard the shares submitted so far.
        #[arg(long)]
        reset: bool,
    },
    /// Seal the server: wipe keys from its memory (Owner only).
    Seal,
    /// Move to the seal in the server's configuration ([seal]: shamir, awskms or pkcs11),
    /// with a quorum of the current shares. The root key and the shares stay the same.
    MigrateSeal {
        /// How many shares to ask for (the threshold).
        #[arg(long, default_value_t = 3)]
        quorum: u8,
        /// Read the shares from standard input, one per line.
        #[arg(long)]
        shares_stdin: bool,
    },
    /// Replace the root key and issue new shares (Owner, with a quorum of the current
    /// shares, prompted one by one or read as lines from standard input).
    Rekey {
        /// How many new shares to issue.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// How many of the new shares unseal the server.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// How many current shares to ask for (the current threshold).
        #[arg(long, default_value_t = 3)]
        quorum: u8,
        /// Read the current shares from standard input, one per line.
        #[arg(long)]
        shares_stdin: bool,
    },
    /// Show sealed/unsealed, unseal progress and version.
    Status,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Username or e-mail address.
    #[arg(long, short, env = "COFFER_USERNAME")]
    pub username: Option<String>,
    /// Read the password from standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// Log in with a JWT from a configured OpenID provider instead of a password.
    #[arg(long, env = "COFFER_OIDC_TOKEN", hide_env_values = true, conflicts_with_all = ["username", "password_stdin"])]
    pub oidc_token: Option<String>,
    /// TOTP or recovery code, when MFA is on (prompted for otherwise).
    #[arg(long, env = "COFFER_MFA_CODE", hide_env_values = true)]
    pub mfa_code: Option<String>,
    /// Organisation to start in.
    #[arg(long)]
    pub org: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The project.
    #[arg(long, short, env = "COFFER_PROJECT")]
    pub project: String,
    /// The environment.
    #[arg(long, short, env = "COFFER_ENV", default_value = "default")]
    pub env: String,
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Projects of the organisation.
    List,
    /// Create a project (with its `default` environment).
    Create {
        /// The project's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnvCmd {
    /// Environments of a project, with what each inherits from.
    List {
        /// The project.
        #[arg(long, short, env = "COFFER_PROJECT")]
        project: String,
    },
    /// Create an environment; it inherits from --parent (default: `default`).
    Create {
        /// The environment's name.
        name: String,
        /// The project.
        #[arg(long, short, env = "COFFER_PROJECT")]
        project: String,
        /// The environment it inherits values from.
        #[arg(long)]
        parent: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ParamCmd {
    /// Set a value: VALUE as given; `@path`: the file's bytes as they are; `-` (or
    /// nothing): standard input less one trailing newline, or at a terminal a prompt
    /// (hidden unless --no-secret).
    Set {
        /// The parameter's name.
        name: String,
        /// The value, `@path` or `-` (prefer `@path` or standard input for secrets: a
        /// value in the command line shows in the shell's history and process list).
        value: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Keep standard input exactly as read (with its trailing newline).
        #[arg(long)]
        raw: bool,
        /// Mark as secret (masked in listings, hidden from Viewers).
        #[arg(long, conflicts_with = "no_secret")]
        secret: bool,
        /// Mark as not secret.
        #[arg(long)]
        no_secret: bool,
    },
    /// Print a value (raw, for scripts; --json for the whole record).
    Get {
        /// The parameter's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the values visible in an environment; secrets masked unless --reveal.
    List {
        #[command(flatten)]
        target: Target,
        /// Show secret values (Contributors and up; audited).
        #[arg(long)]
        reveal: bool,
    },
    /// Versions of a parameter, newest first.
    History {
        /// The parameter's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Make an earlier version current again.
    Rollback {
        /// The parameter's name.
        name: String,
        #[command(flatten)]
        target: Target,
        /// The version whose value becomes current again (as a new version).
        #[arg(long)]
        to: u64,
    },
    /// Delete from this environment (history is kept).
    Delete {
        /// The parameter's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Compare two environments: --env A --env B.
    Diff {
        /// The project.
        #[arg(long, short, env = "COFFER_PROJECT")]
        project: String,
        /// The two environments, each with its own --env.
        #[arg(long = "env", short = 'e', num_args = 1, required = true)]
        envs: Vec<String>,
        /// Show secret values that differ (Contributors and up; audited).
        #[arg(long)]
        reveal: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: Target,
    /// The program and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// NAME="value" lines for `set -a; . ./file` and dotenv libraries.
    Dotenv,
    /// One JSON object.
    Json,
    /// One YAML mapping.
    Yaml,
    /// A Kubernetes Secret manifest.
    K8sSecret,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: Target,
    /// The file format (--json means json).
    #[arg(long, value_enum, default_value = "dotenv")]
    pub format: ExportFormat,
    /// metadata.name of the Kubernetes Secret (default: PROJECT-ENV).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent connections to measure reads at.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub connections: Vec<usize>,
    /// Concurrent writers for the write measurement (0 to skip).
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Read random values of many organisations instead: the targets file written by
    /// `coffer bench-load` (each read uses its organisation's API key).
    #[arg(long)]
    pub targets: Option<std::path::PathBuf>,
    /// Soak instead: this many minutes of mixed load (reads, writes, logins) at `--rate`,
    /// one JSON line of figures per minute on standard output.
    #[arg(long)]
    pub soak_minutes: Option<u64>,
    /// Requests per second the soak aims at, over all its 16 connections.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
}

#[derive(Debug, Args)]
pub struct BenchLoadArgs {
    /// The dev-mode data directory (the dev root key is created there; SQLite's file too).
    #[arg(long)]
    pub data_dir: std::path::PathBuf,
    /// PostgreSQL instead of SQLite (a fresh database).
    #[arg(long, env = "COFFER_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Organisations to create.
    #[arg(long, default_value_t = 10_000)]
    pub orgs: usize,
    /// Values in all, spread evenly over the organisations (secrets of 64 bytes).
    #[arg(long, default_value_t = 1_000_000)]
    pub values: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Where to write the targets (one API key per organisation: created 0600).
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// Then append this many audited-read events (as a secret read records), spread over
    /// the organisations, and checkpoint every chain: a log to archive (issue 24's bench).
    #[arg(long, default_value_t = 0)]
    pub audit_events: u64,
}

/// Which database an operator command opens: the server's, from its configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorDb {
    /// The server's TOML configuration file.
    #[arg(long, env = "COFFER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server's data directory (overrides the file and COFFER_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The server runs in dev mode (its default data directory is .coffer-dev).
    #[arg(long)]
    pub dev: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List events, oldest first (Owners and Admins).
    List {
        /// Only this action (e.g. param.get, member.set_role, customer.deploy).
        #[arg(long)]
        action: Option<String>,
        /// User id of the actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only this outcome.
        #[arg(long, value_parser = ["success", "denied", "failure"])]
        outcome: Option<String>,
        /// Prefix of project/env/name.
        #[arg(long)]
        target: Option<String>,
        /// Events at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Events before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Events per page (1–1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after a previous page (the cursor it printed).
        #[arg(long, conflicts_with = "all")]
        cursor: Option<String>,
        /// Follow `next_cursor` until the end.
        #[arg(long)]
        all: bool,
    },
    /// Stream the log (with checkpoints) to a file or stdout; with --segments, one
    /// organisation's archived events from segment files (offline).
    Export {
        /// ndjson (one line per event, streamable) or json (one document).
        #[arg(long, default_value = "ndjson", value_parser = ["ndjson", "json"])]
        format: String,
        /// Archive segment files to export from instead of the server (repeatable).
        #[arg(long = "segments", num_args = 1..)]
        segments: Vec<std::path::PathBuf>,
        /// The organisation id to export from segments (the system chain: the nil id).
        #[arg(long, requires = "segments")]
        org: Option<uuid::Uuid>,
        /// Events at or after this RFC 3339 time.
        #[arg(long)]
        from: Option<String>,
        /// Events before this RFC 3339 time.
        #[arg(long)]
        to: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Verify the chain on the server; offline with --file: an NDJSON export, or archive
    /// segments as one series (with live exports that continue them).
    Verify {
        /// Files to verify offline: an NDJSON export, or archive segments (and live
        /// exports that continue them).
        #[arg(long, num_args = 1..)]
        file: Vec<std::path::PathBuf>,
        /// Expected checkpoint public key (hex), for offline verification.
        #[arg(long)]
        public_key: Option<String>,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Sign the current end of the chain now.
    Checkpoint,
    /// Write every chain's events before a time to an archive segment file (operator, on
    /// the server's host: reads the database from the server's configuration).
    Archive {
        /// RFC 3339 time or a date (midnight UTC): events signed before it are archived.
        #[arg(long)]
        before: String,
        /// The segment file to write (created 0600 through a temporary file).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Prune the archived events from the database afterwards.
        #[arg(long)]
        prune: bool,
        /// Write at most this many events per second, leaving the machine to the server.
        #[arg(long)]
        rate: Option<u32>,
        /// Encrypt the segment with age to this public key (age1…; repeatable).
        #[arg(long = "recipient", value_name = "AGE_PUBLIC_KEY")]
        recipients: Vec<String>,
        /// Encrypt to the public keys in this file (one per line, as `age -R` reads).
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<std::path::PathBuf>,
        #[command(flatten)]
        server: OperatorDb,
    },
    /// Delete the events that segment files hold from the database, once the files verify
    /// and are the recorded segments (operator).
    Prune {
        /// The segments, every one since the last prune (repeatable).
        #[arg(long, num_args = 1.., required = true)]
        file: Vec<std::path::PathBuf>,
        #[command(flatten)]
        identity: IdentityArg,
        #[command(flatten)]
        server: OperatorDb,
    },
    /// What the audit log holds in the database and what is archived (operator).
    Status {
        #[command(flatten)]
        server: OperatorDb,
    },
    /// Write a customer event into the organisation's chain.
    Log {
        /// The event's name; it is recorded as `customer.<action>`.
        #[arg(long)]
        action: String,
        /// A JSON object.
        #[arg(long)]
        detail: Option<String>,
    },
}

/// `--identity`: the age identity file that opens encrypted segments.
#[derive(Debug, Clone, clap::Args)]
pub struct IdentityArg {
    /// An age identity file (AGE-SECRET-KEY-1…) that opens encrypted segments. Pruning
    /// without it checks that each encrypted file is byte for byte the one recorded.
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum OrgCmd {
    /// Organisations you belong to (* marks the active one).
    List,
    /// Create an organisation; you become its Owner.
    Create {
        /// The organisation's name.
        name: String,
    },
    /// Make another organisation active (a new session replaces the saved one).
    Switch {
        /// The organisation's name.
        name: String,
    },
    /// Members of the active organisation.
    Members,
    /// Invite someone by e-mail.
    Invite {
        /// Their e-mail address.
        email: String,
        /// The role they get: owner, admin, contributor or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// Pending and accepted invitations.
    Invitations,
    /// Accept an invitation (no login needed).
    Accept {
        /// The invitation token (`cfi_…`).
        token: String,
        /// Username for a new account (default: the address's local part; ignored if
        /// the address has an account already).
        #[arg(long, short)]
        username: Option<String>,
        /// Read the password (new account, or the existing account's) from standard
        /// input instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a member's role (Admins cannot change Owners; the last Owner stays).
    SetRole {
        /// The member's username or e-mail address.
        username: String,
        /// owner, admin, contributor or viewer.
        role: String,
    },
    /// Remove a member.
    Remove {
        /// The member's username or e-mail address.
        username: String,
    },
    /// Require MFA of every member (on/off).
    RequireMfa {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Delete the current organisation for good: its keys are destroyed first, so none of
    /// its values can ever be decrypted again (Owner only).
    Delete {
        /// The organisation's name, to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCmd {
    /// Create a key; it is printed once.
    Create {
        /// A name to tell the key by (e.g. what uses it).
        name: String,
        /// Its role, at most yours: owner, admin, contributor or viewer (Viewers do not
        /// read secret values; a program that needs them wants contributor --read-only).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Reads only: the key writes nothing whatever its role.
        #[arg(long)]
        read_only: bool,
        /// Restrict to these projects (repeatable).
        #[arg(long = "project")]
        projects: Vec<String>,
        /// Restrict to these environments (repeatable).
        #[arg(long = "env")]
        envs: Vec<String>,
        /// Lifetime, e.g. 30d (at most 366d).
        #[arg(long, default_value = "90d")]
        expires_in: String,
    },
    /// Your organisation's API keys (never the keys themselves).
    List,
    /// Revoke a key: refused from its next request on.
    Revoke {
        /// The key's id (from `coffer apikey list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MfaCmd {
    /// Set up TOTP: prints the otpauth URI, then asks for a code from your app.
    Enroll {
        /// Read the password from standard input (first line; the code from the app is
        /// then read from the next line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Turn TOTP off (needs your password and a code).
    Disable {
        /// The current code from your app (asked for when absent).
        #[arg(long, env = "COFFER_MFA_CODE", hide_env_values = true)]
        code: Option<String>,
        /// Read the password from standard input (first line) instead of a prompt.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCmd {
    /// Your sessions: where and when they were used.
    List,
    /// End a session.
    Revoke {
        /// The session's id (from `coffer session list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Change your password (ends your other sessions).
    Password {
        /// Read the current password (first line) and the new one (second line) from
        /// standard input instead of prompts.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set the e-mail address notifications go to (omit to clear).
    Email {
        /// The address (omit to clear it).
        email: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and flag explains itself in `--help` (issue 19).
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sc in c.get_subcommands() {
                let p = format!("{path} {}", sc.get_name());
                if sc.get_about().is_none() {
                    missing.push(p.clone());
                }
                walk(sc, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "coffer", &mut missing);
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }
}
