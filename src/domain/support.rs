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
