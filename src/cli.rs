//! `walletd account …` and `walletd transfer …`: the command-line client, for a person at a
//! terminal talking to a running server. Each command is one or two requests through the Rust
//! client library, and prints what came back in words: result codes by name, balances in a
//! table, times as dates.
//!
//! Why it is shaped so:
//! - The work is split from the printing. `account_run` and `transfer_run` take a connected
//!   `Client` and return an `Outcome`, a value whose `Display` is what the terminal shows, so
//!   tests assert on data instead of capturing stdout; `account_command` and `transfer_command`
//!   connect, run, print, and turn a refusal into a non-zero exit.
//! - A business refusal (`ExceedsCredits`, …) is an outcome, printed by name; only `Ok` and
//!   `Exists` (the original outcome of a resubmitted id) count as success for the exit code.
//! - Transfer ids are the idempotency key and carry their creation time in the top 48 bits
//!   (ms since the Unix epoch): the engine refuses an id older than its idempotency window
//!   (`IdTooOld`) rather than risk applying it twice. So `--id N` is the low 80 bits, the
//!   current time is put on top, and the full id is printed for `transfer show` and
//!   `--pending-id`; `--raw-id` sends a full id as given, to retry a command idempotently.
//! - Amounts are integers in minor units (cents, satoshis): `12.50` is refused with the hint to
//!   write `1250`, never rounded.
//! - A create whose reply was lost has an unknown outcome: the error names the full id to
//!   check it with `show` or to resend it with, since the id printed on success never came.
//! - Output goes to a pipe as often as to a terminal: when the reader has gone
//!   (`walletd account show … | head -1`), the rest is dropped quietly, not a panic.

use std::fmt;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use walletd_core::{
    Account, AccountFlags, AccountId, AccountLimits, Amount, BalanceRead, CreateAccountResult, CreateTransferResult,
    LimitFlags, SetLimitsResult, Transfer, TransferFlags, TransferId, TransferRecord, TransferStatus,
};
use walletd_gateway::{Client, ClientError, ClientOptions};

/// Where `walletd serve` listens by default.
pub const ADDR_DEFAULT: &str = "127.0.0.1:4100";
/// How long a command waits for the server before giving up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Create an account, or show one.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct AccountArgs {
    /// The walletd server, host:port.
    #[arg(long, default_value = ADDR_DEFAULT, global = true)]
    pub addr: String,
    #[command(subcommand)]
    pub command: AccountCommand,
}

#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum AccountCommand {
    /// Create an account; with any limit flag, then set its limits.
    Create(AccountCreateArgs),
    /// Show an account's balances, limits, debit usage and open holds.
    Show(AccountShowArgs),
}

#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountCreateArgs {
    /// The account id (decimal, or hex with 0x), chosen by you; not 0.
    #[arg(long, value_parser = id_parse)]
    pub id: u128,
    /// The ledger (currency) the account keeps; transfers stay within one ledger.
    #[arg(long, default_value_t = 1)]
    pub ledger: u32,
    /// A code of your choice for the kind of account.
    #[arg(long, default_value_t = 1)]
    pub code: u16,
    /// Debits (pending and posted) must not exceed credits posted: a wallet that cannot go
    /// below zero, whatever --overdraft-max says (an overdraft limit is for accounts without
    /// this flag).
    #[arg(long)]
    pub no_overdraft: bool,
    /// Credits (pending and posted) must not exceed debits posted.
    #[arg(long)]
    pub credits_must_not_exceed_debits: bool,
    /// Stored with the account (user_data_128), e.g. your own reference.
    #[arg(long, value_parser = id_parse, default_value = "0")]
    pub user_data: u128,
    /// Limit: debits may exceed credits posted by at most this (minor units).
    #[arg(long, value_parser = amount_parse)]
    pub overdraft_max: Option<u128>,
    /// Limit: the balance (credits − debits) may be at most this (minor units).
    #[arg(long, value_parser = amount_parse)]
    pub balance_max: Option<u128>,
    /// Limit: debits per UTC day, summed (minor units).
    #[arg(long, value_parser = amount_parse)]
    pub daily_debit_max: Option<u128>,
    /// Limit: debits per UTC day, counted.
    #[arg(long)]
    pub daily_debit_count_max: Option<u32>,
    /// Limit: debits per UTC month, summed (minor units).
    #[arg(long, value_parser = amount_parse)]
    pub monthly_debit_max: Option<u128>,
    /// Limit: debits per UTC month, counted.
    #[arg(long)]
    pub monthly_debit_count_max: Option<u32>,
}

#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct AccountShowArgs {
    #[arg(long, value_parser = id_parse)]
    pub id: u128,
}

/// Create a transfer (the default: `walletd transfer --id 1 --from 1 --to 2 --amount 100` is
/// `walletd transfer create …`), or post, void or show one.
///
/// Transfer ids are the idempotency key: resending an id returns its original outcome instead of
/// moving money twice. The engine remembers ids for a window and refuses an id whose creation
/// time (its top 48 bits, ms since the Unix epoch) is older than the window (IdTooOld), since it
/// could no longer tell a resend from a new transfer. So `--id N` gives the low 80 bits and the
/// current time fills the top 48; the full id is printed, for `transfer show --id` and
/// `--pending-id`. To resend a command with the very same id, give that full id with --raw-id.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TransferArgs {
    /// The walletd server, host:port.
    #[arg(long, default_value = ADDR_DEFAULT, global = true)]
    pub addr: String,
    #[command(subcommand)]
    pub command: Option<TransferCommand>,
    #[command(flatten)]
    pub create: TransferCreateArgs,
}

impl TransferArgs {
    /// The command asked for: the subcommand, or `create` with the flags given.
    pub fn command(self) -> TransferCommand {
        self.command.unwrap_or(TransferCommand::Create(self.create))
    }
}

/// The transfer subcommands. `create` is also what `walletd transfer` does without one (see
/// `TransferArgs::command`); ids are explained on `TransferArgs`.
#[derive(clap::Subcommand, Clone, Debug, PartialEq, Eq)]
pub enum TransferCommand {
    /// Move money from one account to another; with --pending, only reserve it (a hold).
    /// Also the default: `walletd transfer --id …` creates.
    Create(TransferCreateArgs),
    /// Post a hold: move all of it, or --amount of it, for good (the rest is released).
    Post(TransferPostArgs),
    /// Void a hold: release its reservation.
    Void(TransferVoidArgs),
    /// Show a transfer and what became of it, by its full id.
    Show(TransferShowArgs),
}

/// The flags of a new transfer. `Option`s so that `walletd transfer post …` parses without
/// them; clap requires each one whenever a transfer is created.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferCreateArgs {
    /// The id's low 80 bits (the current time in ms goes on top), or with --raw-id the full id.
    ///
    /// The time on top keeps the id inside the engine's idempotency window, which refuses ids
    /// older than the window (IdTooOld) rather than risk applying one twice. The full id used is
    /// printed; pass it with --raw-id to resend this transfer idempotently.
    #[arg(long, required = true, value_parser = id_parse)]
    pub id: Option<u128>,
    /// The account debited.
    #[arg(long, required = true, value_parser = id_parse)]
    pub from: Option<u128>,
    /// The account credited.
    #[arg(long, required = true, value_parser = id_parse)]
    pub to: Option<u128>,
    /// Minor units (cents, …), an integer.
    #[arg(long, required = true, value_parser = amount_parse)]
    pub amount: Option<u128>,
    /// The ledger (currency) of both accounts.
    #[arg(long, default_value_t = 1)]
    pub ledger: u32,
    /// A code of your choice for the kind of transfer.
    #[arg(long, default_value_t = 1)]
    pub code: u16,
    /// Reserve the amount (a hold) until posted, voided or timed out.
    #[arg(long)]
    pub pending: bool,
    /// With --pending: seconds until the hold expires by itself (0: never).
    #[arg(long, requires = "pending", default_value_t = 0)]
    pub timeout_s: u32,
    /// Set the linked flag. A chain must close within one request, so a lone linked transfer
    /// is refused (LinkedEventChainOpen); this shows that rule.
    #[arg(long)]
    pub linked: bool,
    /// Send --id as the full 128-bit id, unchanged (to retry with the id printed before).
    #[arg(long)]
    pub raw_id: bool,
}

#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferPostArgs {
    /// This post's id: low 80 bits (time on top), or the full id with --raw-id.
    #[arg(long, value_parser = id_parse)]
    pub id: u128,
    /// The hold's full id, as printed when it was created.
    #[arg(long, value_parser = id_parse)]
    pub pending_id: u128,
    /// Post only this much (minor units); default: the whole hold.
    #[arg(long, value_parser = amount_parse)]
    pub amount: Option<u128>,
    /// Send --id as the full 128-bit id, unchanged (to retry with the id printed before).
    #[arg(long)]
    pub raw_id: bool,
}

#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferVoidArgs {
    /// This void's id: low 80 bits (time on top), or the full id with --raw-id.
    #[arg(long, value_parser = id_parse)]
    pub id: u128,
    /// The hold's full id, as printed when it was created.
    #[arg(long, value_parser = id_parse)]
    pub pending_id: u128,
    /// Send --id as the full 128-bit id, unchanged (to retry with the id printed before).
    #[arg(long)]
    pub raw_id: bool,
}

#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct TransferShowArgs {
    /// The full id, as printed when the transfer was created.
    #[arg(long, value_parser = id_parse)]
    pub id: u128,
}

/// A decimal id, or hex with `0x`.
fn id_parse(text: &str) -> Result<u128, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u128::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|_| format!("{text:?} is not an id: give a decimal number below 2^128, or hex with 0x"))
}

/// An amount in minor units: an integer, never a decimal fraction.
fn amount_parse(text: &str) -> Result<u128, String> {
    if text.contains('.') || text.contains(',') {
        return Err(format!(
            "{text:?}: amounts are integers in minor units (cents, …): write 12.50 as 1250, in the ledger's unit"
        ));
    }
    text.replace('_', "").parse().map_err(|_| format!("{text:?} is not an amount: give a whole number of minor units"))
}

/// What stopped a command.
#[derive(Debug)]
pub enum CliError {
    Connect {
        addr: String,
        error: ClientError,
    },
    /// A request failed in transit; its outcome is unknown.
    Request {
        addr: String,
        what: &'static str,
        error: ClientError,
        /// For a create: what was being created, to check or resend by its full id (boxed:
        /// it would double the error's size).
        created: Option<Box<Created>>,
    },
    /// A lookup found nothing.
    NotFound {
        addr: String,
        what: String,
    },
    /// The server refused the command (a result code other than ok): the printed outcome.
    Refused {
        outcome: String,
    },
    Args(String),
    /// Writing the output failed (other than its reader having gone).
    Output(std::io::Error),
}

/// What a create whose outcome is unknown was creating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    Account {
        id: u128,
    },
    /// A transfer, hold, post or void (`kind` says which), by its full id.
    Transfer {
        kind: &'static str,
        id: TransferId,
    },
}

impl fmt::Display for Created {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Created::Account { id } => write!(
                f,
                "the outcome of account {id} is unknown: check it with `walletd account show --id {id}`, or resend \
                 the same command (a resent account id returns exists, never a second account)"
            ),
            Created::Transfer { kind, id } => write!(
                f,
                "the outcome of {kind} {} ({:#x}) is unknown: check it with `walletd transfer show --id {}`, or \
                 resend the same command with `--raw-id --id {}` (the same full id returns the original outcome, \
                 never a second transfer)",
                id.0, id.0, id.0, id.0
            ),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Connect { addr, error } => {
                write!(f, "cannot connect to walletd at {addr}: {}", connect_reason(error))
            }
            CliError::Request { addr, what, error, created } => {
                write!(f, "{what} at {addr} failed: {error}")?;
                match created {
                    Some(created) => write!(f, "\n{created}"),
                    None => Ok(()),
                }
            }
            CliError::NotFound { addr, what } => write!(f, "{what} not found at {addr}"),
            CliError::Refused { outcome } => write!(f, "refused: {outcome}"),
            CliError::Args(message) => f.write_str(message),
            CliError::Output(error) => write!(f, "cannot write the output: {error}"),
        }
    }
}

impl std::error::Error for CliError {}

pub use walletd_gateway::client::connect_reason;

/// Connects with the CLI's options.
pub fn connect(addr: &str) -> Result<Client, CliError> {
    let options = ClientOptions { request_timeout: REQUEST_TIMEOUT, ..ClientOptions::default() };
    Client::connect(addr, options).map_err(|error| CliError::Connect { addr: addr.to_string(), error })
}

/// `walletd account …`: connect to `addr`, run, print; a refusal is an error (non-zero exit).
pub fn account_command(addr: &str, command: AccountCommand) -> Result<(), CliError> {
    let client = connect(addr)?;
    outcome_print(account_run(&client, addr, &command)?)
}

/// `walletd transfer …`: connect to `addr`, run, print; a refusal is an error (non-zero exit).
pub fn transfer_command(addr: &str, command: TransferCommand) -> Result<(), CliError> {
    let client = connect(addr)?;
    outcome_print(transfer_run(&client, addr, &command)?)
}

fn outcome_print(outcome: Outcome) -> Result<(), CliError> {
    if !outcome.is_ok() {
        return Err(CliError::Refused { outcome: outcome.to_string() });
    }
    stdout_print(&mut std::io::stdout().lock(), &outcome)
}

/// Writes `text` and a newline. A reader that has gone (a closed pipe) wanted no more: that
/// is not an error, and nothing is printed about it.
pub fn stdout_print(out: &mut impl Write, text: &impl fmt::Display) -> Result<(), CliError> {
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(CliError::Output(error)),
    }
}

/// What a command did: printed by `Display`, asserted on by tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    AccountCreated {
        id: u128,
        result: CreateAccountResult,
        limits: Option<SetLimitsResult>,
    },
    AccountShown(Box<AccountShown>),
    /// A create, post or void; `kind` says which.
    TransferCreated {
        kind: &'static str,
        id: TransferId,
        result: CreateTransferResult,
    },
    TransferShown(TransferRecord),
}

/// One account as `lookup_balances` read it, with its open holds listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountShown {
    pub read: BalanceRead,
    pub holds: Vec<Transfer>,
}

impl Outcome {
    /// Success for the exit code: `Ok`, or `Exists` (the original outcome of a resent id).
    pub fn is_ok(&self) -> bool {
        match self {
            Outcome::AccountCreated { result, limits, .. } => {
                matches!(result, CreateAccountResult::Ok | CreateAccountResult::Exists)
                    && limits.is_none_or(|limits| limits == SetLimitsResult::Ok)
            }
            Outcome::TransferCreated { result, .. } => {
                matches!(result, CreateTransferResult::Ok | CreateTransferResult::Exists)
            }
            Outcome::AccountShown(_) | Outcome::TransferShown(_) => true,
        }
    }
}

/// Runs an account command on a connected client (`addr` only names it in errors).
pub fn account_run(client: &Client, addr: &str, command: &AccountCommand) -> Result<Outcome, CliError> {
    match command {
        AccountCommand::Create(args) => account_create(client, addr, args),
        AccountCommand::Show(args) => account_show(client, addr, args.id),
    }
}

/// Runs a transfer command on a connected client (`addr` only names it in errors).
pub fn transfer_run(client: &Client, addr: &str, command: &TransferCommand) -> Result<Outcome, CliError> {
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970").as_millis() as u64;
    let (kind, transfer) = match command {
        TransferCommand::Show(args) => return transfer_show(client, addr, args.id),
        TransferCommand::Create(args) => {
            (if args.pending { "hold" } else { "transfer" }, transfer_build(args, now_ms)?)
        }
        TransferCommand::Post(args) => ("post", post_build(args, now_ms)?),
        TransferCommand::Void(args) => ("void", void_build(args, now_ms)?),
    };
    let results = client.create_transfers(&[transfer]).map_err(|error| CliError::Request {
        addr: addr.to_string(),
        what: "create_transfers",
        error,
        created: Some(Box::new(Created::Transfer { kind, id: transfer.id })),
    })?;
    assert!(results.len() <= 1, "one event, at most one result");
    assert!(results.iter().all(|result| result.index == 0), "the result is for event 0");
    let code = results.first().map_or(0, |result| result.code);
    let result = CreateTransferResult::from_u32(code).ok_or_else(|| {
        CliError::Args(format!("the server answered with unknown result code {code}: upgrade walletd"))
    })?;
    Ok(Outcome::TransferCreated { kind, id: transfer.id, result })
}

fn account_create(client: &Client, addr: &str, args: &AccountCreateArgs) -> Result<Outcome, CliError> {
    let request = |what| {
        move |error| CliError::Request {
            addr: addr.to_string(),
            what,
            error,
            created: Some(Box::new(Created::Account { id: args.id })),
        }
    };
    let mut flags = 0;
    if args.no_overdraft {
        flags |= AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
    }
    if args.credits_must_not_exceed_debits {
        flags |= AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
    }
    let account = Account {
        id: AccountId(args.id),
        user_data_128: args.user_data,
        ledger: args.ledger,
        code: args.code,
        flags: AccountFlags(flags),
        ..Account::default()
    };
    let results = client.create_accounts(&[account]).map_err(request("create_accounts"))?;
    assert!(results.len() <= 1, "one event, at most one result");
    let result = create_account_result(results.first().map_or(0, |result| result.code))?;
    let limits = match account_limits(args) {
        Some(limits) if matches!(result, CreateAccountResult::Ok | CreateAccountResult::Exists) => {
            let results = client.set_account_limits(&[limits]).map_err(request("set_account_limits"))?;
            assert!(results.len() <= 1, "one event, at most one result");
            let code = results.first().map_or(0, |result| result.code);
            Some(SetLimitsResult::from_u32(code).ok_or_else(|| unknown_code(code))?)
        }
        _ => None,
    };
    Ok(Outcome::AccountCreated { id: args.id, result, limits })
}

fn create_account_result(code: u32) -> Result<CreateAccountResult, CliError> {
    CreateAccountResult::from_u32(code).ok_or_else(|| unknown_code(code))
}

fn unknown_code(code: u32) -> CliError {
    CliError::Args(format!("the server answered with unknown result code {code}: upgrade this walletd client"))
}

/// The limits the flags ask for, or `None` when no limit flag was given.
fn account_limits(args: &AccountCreateArgs) -> Option<AccountLimits> {
    let mut limits = AccountLimits { account_id: AccountId(args.id), ..AccountLimits::default() };
    let mut flags = 0;
    let amounts = [
        (args.overdraft_max, LimitFlags::OVERDRAFT, &mut limits.overdraft_max),
        (args.balance_max, LimitFlags::BALANCE_MAX, &mut limits.balance_max),
        (args.daily_debit_max, LimitFlags::DAILY_DEBIT_AMOUNT, &mut limits.daily_debit_amount_max),
        (args.monthly_debit_max, LimitFlags::MONTHLY_DEBIT_AMOUNT, &mut limits.monthly_debit_amount_max),
    ];
    for (value, flag, field) in amounts {
        if let Some(value) = value {
            *field = Amount(value);
            flags |= flag;
        }
    }
    let counts = [
        (args.daily_debit_count_max, LimitFlags::DAILY_DEBIT_COUNT, &mut limits.daily_debit_count_max),
        (args.monthly_debit_count_max, LimitFlags::MONTHLY_DEBIT_COUNT, &mut limits.monthly_debit_count_max),
    ];
    for (value, flag, field) in counts {
        if let Some(value) = value {
            *field = value;
            flags |= flag;
        }
    }
    assert!(flags & !LimitFlags::MASK == 0);
    limits.flags = LimitFlags(flags);
    (flags != 0).then_some(limits)
}

fn account_show(client: &Client, addr: &str, id: u128) -> Result<Outcome, CliError> {
    let balances = client.lookup_balances(&[AccountId(id)]).map_err(|error| CliError::Request {
        addr: addr.to_string(),
        what: "lookup_balances",
        error,
        created: None,
    })?;
    let Some(read) = balances.reads.first() else {
        return Err(CliError::NotFound { addr: addr.to_string(), what: format!("account {id}") });
    };
    assert_eq!(read.account.id, AccountId(id), "the read is of the account asked for");
    let holds = balances.holds_of(read).to_vec();
    Ok(Outcome::AccountShown(Box::new(AccountShown { read: *read, holds })))
}

fn transfer_show(client: &Client, addr: &str, id: u128) -> Result<Outcome, CliError> {
    let records = client.lookup_transfers(&[TransferId(id)]).map_err(|error| CliError::Request {
        addr: addr.to_string(),
        what: "lookup_transfers",
        error,
        created: None,
    })?;
    let Some(record) = records.first() else {
        let what = format!(
            "transfer {id} (give the full id printed when it was created; ids older than the idempotency window \
             are forgotten)"
        );
        return Err(CliError::NotFound { addr: addr.to_string(), what });
    };
    assert_eq!(record.transfer.id, TransferId(id), "the record is of the transfer asked for");
    Ok(Outcome::TransferShown(*record))
}

/// The id to send: `low` under the current time, or `low` itself with --raw-id.
pub fn transfer_id(low: u128, raw_id: bool, now_ms: u64) -> Result<TransferId, CliError> {
    if raw_id {
        return Ok(TransferId(low));
    }
    if low >> TransferId::TIME_SHIFT != 0 {
        return Err(CliError::Args(format!(
            "--id {low} does not fit in the id's low 80 bits (the current time fills the top 48): give a smaller \
             number, or a full id with --raw-id"
        )));
    }
    let id = TransferId::from_parts(now_ms, low);
    assert_eq!(id.time_ms(), now_ms);
    Ok(id)
}

fn transfer_build(args: &TransferCreateArgs, now_ms: u64) -> Result<Transfer, CliError> {
    let required = |value: Option<u128>, flag: &str| value.ok_or_else(|| CliError::Args(format!("{flag} is required")));
    let mut flags = 0;
    if args.pending {
        flags |= TransferFlags::PENDING;
    }
    if args.linked {
        flags |= TransferFlags::LINKED;
    }
    if args.timeout_s != 0 && !args.pending {
        return Err(CliError::Args("--timeout-s is for holds: add --pending".into()));
    }
    Ok(Transfer {
        id: transfer_id(required(args.id, "--id")?, args.raw_id, now_ms)?,
        debit_account_id: AccountId(required(args.from, "--from")?),
        credit_account_id: AccountId(required(args.to, "--to")?),
        amount: Amount(required(args.amount, "--amount")?),
        ledger: args.ledger,
        code: args.code,
        flags: TransferFlags(flags),
        timeout_s: args.timeout_s,
        ..Transfer::default()
    })
}

/// A post: accounts, ledger and code zero inherit the hold's; amount zero means all of it.
fn post_build(args: &TransferPostArgs, now_ms: u64) -> Result<Transfer, CliError> {
    Ok(Transfer {
        id: transfer_id(args.id, args.raw_id, now_ms)?,
        pending_id: TransferId(args.pending_id),
        amount: Amount(args.amount.unwrap_or(0)),
        flags: TransferFlags(TransferFlags::POST_PENDING),
        ..Transfer::default()
    })
}

fn void_build(args: &TransferVoidArgs, now_ms: u64) -> Result<Transfer, CliError> {
    Ok(Transfer {
        id: transfer_id(args.id, args.raw_id, now_ms)?,
        pending_id: TransferId(args.pending_id),
        flags: TransferFlags(TransferFlags::VOID_PENDING),
        ..Transfer::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Printing.

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::AccountCreated { id, result, limits } => {
                write!(f, "account {id}: {}", result.name())?;
                if *result == CreateAccountResult::Exists {
                    write!(f, " (it was created before, with these same fields)")?;
                }
                match limits {
                    Some(limits) => write!(f, "\nlimits: {}", limits.name()),
                    None => Ok(()),
                }
            }
            Outcome::TransferCreated { kind, id, result } => {
                write!(f, "{kind} {}: {}", id.0, result.name())?;
                if *result == CreateTransferResult::Exists {
                    write!(f, " (it was created before, with these same fields)")?;
                }
                if !self.is_ok() {
                    return write!(f, "\nnothing was created");
                }
                write!(
                    f,
                    "\nid {:#x}, its time {}; see it with: walletd transfer show --id {}",
                    id.0,
                    time_ms_format(id.time_ms()),
                    id.0
                )
            }
            Outcome::AccountShown(shown) => account_shown_write(f, shown),
            Outcome::TransferShown(record) => transfer_record_write(f, record),
        }
    }
}

fn account_shown_write(f: &mut fmt::Formatter<'_>, shown: &AccountShown) -> fmt::Result {
    let (account, read) = (&shown.read.account, &shown.read);
    writeln!(f, "account         {}", account.id.0)?;
    writeln!(f, "ledger / code   {} / {}", account.ledger, account.code)?;
    writeln!(f, "flags           {}", account_flags_names(account.flags))?;
    writeln!(f, "user_data_128   {}", account.user_data_128)?;
    writeln!(f, "                {:>20} {:>20}", "pending", "posted")?;
    writeln!(f, "debits          {:>20} {:>20}", account.debits_pending.0, account.debits_posted.0)?;
    writeln!(f, "credits         {:>20} {:>20}", account.credits_pending.0, account.credits_posted.0)?;
    writeln!(
        f,
        "balance         {} (credits posted − debits posted)",
        difference(account.credits_posted, account.debits_posted)
    )?;
    let available = account.debits_posted.checked_add(account.debits_pending).unwrap_or(Amount(u128::MAX));
    writeln!(
        f,
        "available       {} (credits posted − debits posted − debits pending)",
        difference(account.credits_posted, available)
    )?;
    writeln!(f, "limits          {}", limits_describe(&read.limits))?;
    let velocity = LimitFlags::DAILY_DEBIT_AMOUNT
        | LimitFlags::DAILY_DEBIT_COUNT
        | LimitFlags::MONTHLY_DEBIT_AMOUNT
        | LimitFlags::MONTHLY_DEBIT_COUNT;
    if read.limits.flags.0 & velocity != 0 {
        let usage = &read.usage;
        let (year, month, day) = civil_from_days(u64::from(usage.day));
        let (month_year, month_of_year) = (1970 + usage.month / 12, usage.month % 12 + 1);
        writeln!(
            f,
            "debit usage     day {year:04}-{month:02}-{day:02}: {} debits, {}; month {month_year:04}-{month_of_year:02}: {} \
             debits, {} (as of the last debit)",
            usage.day_count, usage.day_amount.0, usage.month_count, usage.month_amount.0
        )?;
    }
    write!(f, "open holds      {}", read.holds_count_total)?;
    for hold in &shown.holds {
        write!(
            f,
            "\n  hold {}  {} → {}  amount {}  timeout {} s",
            hold.id.0, hold.debit_account_id.0, hold.credit_account_id.0, hold.amount.0, hold.timeout_s
        )?;
    }
    if read.holds_count < read.holds_count_total {
        write!(f, "\n  … {} more not listed", read.holds_count_total - read.holds_count)?;
    }
    Ok(())
}

fn transfer_record_write(f: &mut fmt::Formatter<'_>, record: &TransferRecord) -> fmt::Result {
    let transfer = &record.transfer;
    writeln!(f, "transfer        {} = {:#x}", transfer.id.0, transfer.id.0)?;
    writeln!(f, "status          {}", transfer_status_name(record.status))?;
    writeln!(f, "created (id)    {}", time_ms_format(transfer.id.time_ms()))?;
    writeln!(f, "debit → credit  {} → {}", transfer.debit_account_id.0, transfer.credit_account_id.0)?;
    writeln!(f, "amount          {}", transfer.amount.0)?;
    writeln!(f, "ledger / code   {} / {}", transfer.ledger, transfer.code)?;
    writeln!(f, "flags           {}", transfer_flags_names(transfer.flags))?;
    if transfer.pending_id.0 != 0 {
        writeln!(f, "pending_id      {}", transfer.pending_id.0)?;
    }
    if transfer.flags.contains(TransferFlags::PENDING) {
        writeln!(f, "timeout         {} s", transfer.timeout_s)?;
    }
    write!(
        f,
        "applied at      {} (engine timestamp {} ns)",
        time_ms_format(transfer.timestamp / 1_000_000),
        transfer.timestamp
    )
}

/// `a − b` with its sign, exact for any u128s.
fn difference(a: Amount, b: Amount) -> String {
    if a.0 >= b.0 {
        (a.0 - b.0).to_string()
    } else {
        format!("-{}", b.0 - a.0)
    }
}

fn limits_describe(limits: &AccountLimits) -> String {
    let flags = limits.flags;
    let parts = [
        (LimitFlags::OVERDRAFT, format!("overdraft_max {}", limits.overdraft_max.0)),
        (LimitFlags::BALANCE_MAX, format!("balance_max {}", limits.balance_max.0)),
        (LimitFlags::DAILY_DEBIT_AMOUNT, format!("daily_debit_max {}", limits.daily_debit_amount_max.0)),
        (LimitFlags::DAILY_DEBIT_COUNT, format!("daily_debit_count_max {}", limits.daily_debit_count_max)),
        (LimitFlags::MONTHLY_DEBIT_AMOUNT, format!("monthly_debit_max {}", limits.monthly_debit_amount_max.0)),
        (LimitFlags::MONTHLY_DEBIT_COUNT, format!("monthly_debit_count_max {}", limits.monthly_debit_count_max)),
    ];
    let set: Vec<String> = parts.into_iter().filter(|(flag, _)| flags.contains(*flag)).map(|(_, text)| text).collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(", ")
    }
}

fn account_flags_names(flags: AccountFlags) -> String {
    let names = [
        (AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS, "debits_must_not_exceed_credits"),
        (AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS, "credits_must_not_exceed_debits"),
        (AccountFlags::CLOSED, "closed"),
        (AccountFlags::LIMITS, "limits"),
    ];
    flags_join(names.iter().filter(|(flag, _)| flags.contains(*flag)).map(|(_, name)| *name))
}

fn transfer_flags_names(flags: TransferFlags) -> String {
    let names = [
        (TransferFlags::LINKED, "linked"),
        (TransferFlags::PENDING, "pending"),
        (TransferFlags::POST_PENDING, "post_pending"),
        (TransferFlags::VOID_PENDING, "void_pending"),
    ];
    flags_join(names.iter().filter(|(flag, _)| flags.contains(*flag)).map(|(_, name)| *name))
}

fn flags_join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" | ")
    }
}

pub fn transfer_status_name(status: TransferStatus) -> &'static str {
    match status {
        TransferStatus::Posted => "posted",
        TransferStatus::Voided => "voided",
        TransferStatus::Pending => "pending",
        TransferStatus::PendingPosted => "pending_posted",
        TransferStatus::PendingVoided => "pending_voided",
        TransferStatus::PendingExpired => "pending_expired",
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
pub fn time_ms_format(time_ms: u64) -> String {
    let (days, ms_of_day) = (time_ms / 86_400_000, time_ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, ms) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}.{ms:03} UTC")
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    assert!((1..=12).contains(&month) && (1..=31).contains(&day));
    (year, month, day)
}
