//! Pushes from delivery: messages and receipts of followed conversations, joins, listing
//! fingerprints, presence and typing.

use natter_proto::frames::{PresencePrivacy, PresenceStatus, ServerFrame};
use natter_proto::ConversationId;
use natter_raft::query::Query;

use super::{Request, Session, Step, Task, Time};
use crate::delivery::Push;

impl Session {
    /// Delivers a push: the next seq goes out at once, a later one means a gap to fill from
    /// the shard, an earlier one was already delivered.
    pub(super) fn on_push(&mut self, push: Push, time: Time) {
        match push {
            Push::Message(message) => {
                let Some(&last) = self.delivered.get(&message.conversation) else { return };
                if message.seq == last + 1 {
                    self.delivered.insert(message.conversation, message.seq);
                    self.write(ServerFrame::Message(message));
                } else if message.seq > last + 1 {
                    self.catch_up(message.conversation);
                }
            }
            Push::Receipt { conversation, user, delivered, read } => {
                if !self.delivered.contains_key(&conversation) {
                    return;
                }
                let last = self.receipts.get(&(conversation, user.clone())).copied();
                let next = last.map_or((delivered, read), |(d, r)| (d.max(delivered), r.max(read)));
                if Some(next) == last {
                    return;
                }
                self.receipts.insert((conversation, user.clone()), next);
                self.write(ServerFrame::Receipt { conversation, user, delivered: next.0, read: next.1 });
            }
            Push::Behind { conversation, last_seq } => {
                if self.delivered.get(&conversation).is_some_and(|&last| last_seq > last) {
                    self.catch_up(conversation);
                }
            }
            Push::Joined { conversation, .. } => {
                self.listing.handle_joined(conversation);
                self.tasks.push_front(Task::Join(conversation));
            }
            Push::Listing { digest, .. } => {
                if digest == self.listing.digest() {
                    return;
                }
                let Some((user, _)) = self.identity.clone() else { return };
                let shard = self.user_shard(&user);
                self.park(Request::Read { shard, query: Query::UserConversations { user } }, Step::Relist);
            }
            Push::Presence { user, status, last_seen, custom, privacy } => {
                let Some((me, _)) = &self.identity else { return };
                if user == *me || !self.contacts.contains(&user) {
                    return;
                }
                let visible = match privacy {
                    PresencePrivacy::Everyone => true,
                    PresencePrivacy::Contacts => self.delivered.contains_key(&ConversationId::direct(me, &user)),
                    PresencePrivacy::Nobody => false,
                };
                let shown = if visible { (status, last_seen, custom) } else { (PresenceStatus::Offline, None, None) };
                if self.presence_shown.get(&user) == Some(&shown) {
                    return;
                }
                self.presence_shown.insert(user.clone(), shown.clone());
                self.presence_pending.handle_update(user, shown, time.now);
                self.flush_presence(time.now);
            }
            Push::Typing { conversation, user, active } => {
                // A user's own typing is not news to their other devices.
                let own = self.identity.as_ref().is_some_and(|(me, _)| *me == user);
                if own || !self.delivered.contains_key(&conversation) {
                    return;
                }
                self.write(ServerFrame::Typing { conversation, user, active });
            }
        }
    }
}
