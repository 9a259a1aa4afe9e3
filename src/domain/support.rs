//! Support conversations' states.

text_enum! {
    /// Where a support conversation stands.
    pub enum ConversationStatus {
        /// The agent answers.
        Ai = "ai",
        /// Admins were asked to step in; the agent still answers until one
        /// does.
        Escalated = "escalated",
        /// An admin took over: the agent is silent.
        Human = "human",
    }
}

impl serde::Serialize for ConversationStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
