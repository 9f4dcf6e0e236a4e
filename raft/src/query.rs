//! Reads of a shard's state, as values that can travel to the replica that serves them.

use natter_proto::{ConversationId, UserId};
use serde::{Deserialize, Serialize};

use crate::command::{CommandError, ConversationView, MessageView, UserRecord};
use crate::state_machine::Reader;

/// Most messages one [`Query::After`] returns (catch-up pages).
pub const CATCH_UP_PAGE_MAX: u32 = 1000;

/// A read of one shard. Conversation reads are for members only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// A conversation with its members.
    Conversation {
        /// The conversation.
        conversation: ConversationId,
        /// The member asking.
        user: UserId,
    },
    /// A history page: up to `limit` messages below `before` (newest if `None`), ascending.
    History {
        /// The conversation.
        conversation: ConversationId,
        /// The member asking.
        user: UserId,
        /// Exclusive upper seq bound.
        before: Option<u64>,
        /// Page size (capped at `HISTORY_PAGE_MAX`).
        limit: u32,
    },
    /// Catch-up: up to `limit` messages after seq `after`, ascending.
    After {
        /// The conversation.
        conversation: ConversationId,
        /// The member asking.
        user: UserId,
        /// Exclusive lower seq bound.
        after: u64,
        /// Page size (capped at [`CATCH_UP_PAGE_MAX`]).
        limit: u32,
    },
    /// The conversations a user belongs to (user shard).
    UserConversations {
        /// The user.
        user: UserId,
    },
    /// A user's record: last seen and settings (user shard).
    User {
        /// The user.
        user: UserId,
    },
}

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// A conversation.
    Conversation(ConversationView),
    /// Messages in ascending seq order.
    Messages(Vec<MessageView>),
    /// Conversation ids.
    Conversations(Vec<ConversationId>),
    /// A user record.
    User(UserRecord),
    /// Refused (not a member, or no such conversation: the same answer).
    Rejected(CommandError),
}

impl Reader<'_> {
    /// Answers `query` from this shard's state.
    pub fn query(&self, txn: &heed::RoTxn<'_>, query: &Query) -> heed::Result<QueryResult> {
        let refuse = |result: Result<(), CommandError>| result.err().map(QueryResult::Rejected);
        Ok(match query {
            Query::Conversation { conversation, user } => {
                if let Some(refused) = refuse(self.check_member(txn, conversation, user)?) {
                    return Ok(refused);
                }
                match self.conversation(txn, conversation)? {
                    Some(view) => QueryResult::Conversation(view),
                    None => QueryResult::Rejected(CommandError::NotMember {
                        user: user.clone(),
                        conversation: *conversation,
                    }),
                }
            }
            Query::History { conversation, user, before, limit } => {
                match self.history(txn, conversation, user, *before, *limit)? {
                    Ok(messages) => QueryResult::Messages(messages),
                    Err(error) => QueryResult::Rejected(error),
                }
            }
            Query::After { conversation, user, after, limit } => {
                if let Some(refused) = refuse(self.check_member(txn, conversation, user)?) {
                    return Ok(refused);
                }
                let limit = (*limit).min(CATCH_UP_PAGE_MAX) as usize;
                QueryResult::Messages(self.messages_after(txn, conversation, *after, limit)?)
            }
            Query::UserConversations { user } => QueryResult::Conversations(self.user_conversations(txn, user)?),
            Query::User { user } => QueryResult::User(self.user(txn, user)?),
        })
    }
}
