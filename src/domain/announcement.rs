//! Announcements to every user (or every user of a role).

use super::email::EmailKind;

text_enum! {
    /// What an announcement is, which decides who is emailed.
    pub enum AnnouncementKind {
        /// A material change to the terms or the privacy policy: everyone
        /// is emailed (it is not marketing).
        Policy = "policy",
        /// Only users who opted in to marketing emails are emailed.
        Marketing = "marketing",
    }
}

text_enum! {
    pub enum AnnouncementState {
        /// Users are still being notified.
        Running = "running",
        /// Every matching user has been notified and their email queued.
        Done = "done",
    }
}

impl AnnouncementKind {
    /// The kind of its notifications and emails.
    pub fn email_kind(self) -> EmailKind {
        match self {
            AnnouncementKind::Policy => EmailKind::Policy,
            AnnouncementKind::Marketing => EmailKind::Marketing,
        }
    }
}

/// The notification source of an announcement: one per user, so a page
/// done twice notifies no one twice.
pub fn announcement_source(id: &str) -> String {
    format!("announcement:{id}")
}

/// The prefix of every announcement's notification source.
pub const ANNOUNCEMENT_SOURCE_PREFIX: &str = "announcement:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_emailed_as_policy_and_marketing_as_marketing() {
        assert_eq!(AnnouncementKind::Policy.email_kind(), EmailKind::Policy);
        assert_eq!(
            AnnouncementKind::Marketing.email_kind(),
            EmailKind::Marketing
        );
        assert!(announcement_source("a1").starts_with(ANNOUNCEMENT_SOURCE_PREFIX));
    }
}
