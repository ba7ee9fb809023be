//! Result codes: a business rejection is data, not an error. `apply` never fails; each event
//! gets one of these codes, which is journaled and replayed like anything else. The numeric
//! values are part of the wire protocol and never change meaning; new codes are appended.

macro_rules! result_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every code, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn from_u32(value: u32) -> Option<$name> {
                match value {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

result_enum! {
    /// The outcome of one `create_accounts` event.
    CreateAccountResult {
        Ok = 0,
        LinkedEventFailed = 1,
        LinkedEventChainOpen = 2,
        TimestampMustBeZero = 3,
        ReservedField = 4,
        ReservedFlag = 5,
        IdMustNotBeZero = 6,
        IdMustNotBeIntMax = 7,
        FlagsAreMutuallyExclusive = 8,
        DebitsPendingMustBeZero = 9,
        DebitsPostedMustBeZero = 10,
        CreditsPendingMustBeZero = 11,
        CreditsPostedMustBeZero = 12,
        LedgerMustNotBeZero = 13,
        CodeMustNotBeZero = 14,
        ExistsWithDifferentFlags = 15,
        ExistsWithDifferentUserData128 = 16,
        ExistsWithDifferentUserData64 = 17,
        ExistsWithDifferentUserData32 = 18,
        ExistsWithDifferentLedger = 19,
        ExistsWithDifferentCode = 20,
        /// The account exists with exactly these fields: the original outcome of a resubmission.
        Exists = 21,
        /// `accounts_max` accounts exist already.
        AccountsFull = 22,
        /// `ledgers_max` distinct ledgers exist already.
        LedgersFull = 23,
    }
}

result_enum! {
    /// The outcome of one `create_transfers` event.
    CreateTransferResult {
        Ok = 0,
        LinkedEventFailed = 1,
        LinkedEventChainOpen = 2,
        TimestampMustBeZero = 3,
        ReservedFlag = 4,
        IdMustNotBeZero = 5,
        IdMustNotBeIntMax = 6,
        /// The id's embedded time is below the idempotency horizon: the engine can no longer
        /// tell whether it was applied, so it refuses rather than risk applying it twice.
        IdTooOld = 7,
        /// The id's embedded time is further ahead of the engine's clock than `id_future_ms_max`.
        IdTimestampInFuture = 8,
        FlagsAreMutuallyExclusive = 9,
        DebitAccountIdMustNotBeZero = 10,
        DebitAccountIdMustNotBeIntMax = 11,
        CreditAccountIdMustNotBeZero = 12,
        CreditAccountIdMustNotBeIntMax = 13,
        AccountsMustBeDifferent = 14,
        PendingIdMustBeZero = 15,
        PendingIdMustNotBeZero = 16,
        PendingIdMustNotBeIntMax = 17,
        PendingIdMustBeDifferent = 18,
        TimeoutReservedForPendingTransfer = 19,
        AmountMustNotBeZero = 20,
        LedgerMustNotBeZero = 21,
        CodeMustNotBeZero = 22,
        DebitAccountNotFound = 23,
        CreditAccountNotFound = 24,
        AccountsMustHaveTheSameLedger = 25,
        TransferMustHaveTheSameLedgerAsAccounts = 26,
        PendingTransferNotFound = 27,
        PendingTransferNotPending = 28,
        PendingTransferHasDifferentDebitAccountId = 29,
        PendingTransferHasDifferentCreditAccountId = 30,
        PendingTransferHasDifferentLedger = 31,
        PendingTransferHasDifferentCode = 32,
        ExceedsPendingTransferAmount = 33,
        PendingTransferHasDifferentAmount = 34,
        PendingTransferAlreadyPosted = 35,
        PendingTransferAlreadyVoided = 36,
        PendingTransferExpired = 37,
        /// The pending transfer is older than the idempotency horizon and no longer open: its
        /// outcome is no longer remembered.
        PendingTransferTooOld = 38,
        ExistsWithDifferentFlags = 39,
        ExistsWithDifferentDebitAccountId = 40,
        ExistsWithDifferentCreditAccountId = 41,
        ExistsWithDifferentAmount = 42,
        ExistsWithDifferentPendingId = 43,
        ExistsWithDifferentUserData128 = 44,
        ExistsWithDifferentUserData64 = 45,
        ExistsWithDifferentUserData32 = 46,
        ExistsWithDifferentTimeout = 47,
        ExistsWithDifferentLedger = 48,
        ExistsWithDifferentCode = 49,
        /// The transfer exists with exactly these fields: the original outcome of a resubmission.
        Exists = 50,
        OverflowsDebitsPending = 51,
        OverflowsCreditsPending = 52,
        OverflowsDebitsPosted = 53,
        OverflowsCreditsPosted = 54,
        OverflowsDebits = 55,
        OverflowsCredits = 56,
        OverflowsTimeout = 57,
        /// The debit account has DEBITS_MUST_NOT_EXCEED_CREDITS: insufficient funds.
        ExceedsCredits = 58,
        /// The credit account has CREDITS_MUST_NOT_EXCEED_DEBITS.
        ExceedsDebits = 59,
        DebitAccountClosed = 60,
        CreditAccountClosed = 61,
        OverdraftLimitExceeded = 62,
        BalanceLimitExceeded = 63,
        DailyDebitAmountExceeded = 64,
        DailyDebitCountExceeded = 65,
        MonthlyDebitAmountExceeded = 66,
        MonthlyDebitCountExceeded = 67,
        /// `pending_max` pending transfers are open already.
        PendingTransfersFull = 68,
    }
}

result_enum! {
    /// The outcome of one `close_accounts` or `reopen_accounts` event.
    AccountStateResult {
        Ok = 0,
        AccountIdMustNotBeZero = 1,
        AccountIdMustNotBeIntMax = 2,
        AccountNotFound = 3,
        AlreadyClosed = 4,
        NotClosed = 5,
    }
}

result_enum! {
    /// The outcome of one `set_account_limits` event.
    SetLimitsResult {
        Ok = 0,
        TimestampMustBeZero = 1,
        ReservedField = 2,
        ReservedFlag = 3,
        AccountIdMustNotBeZero = 4,
        AccountIdMustNotBeIntMax = 5,
        AccountNotFound = 6,
        /// `limits_max` accounts have limits already.
        LimitsFull = 7,
    }
}
