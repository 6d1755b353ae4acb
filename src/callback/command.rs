//! Facts about callback command names: which are before-callbacks, and their bounded metric labels (shared doc §8).

/// Label of every `OfficialAccount.` command (the docs list them only as `OfficialAccount.*`).
pub const OFFICIAL_ACCOUNT_LABEL: &str = "OfficialAccount.*";

/// Label of every command not listed in shared doc §8.
pub const OTHER_COMMAND_LABEL: &str = "other";

const OFFICIAL_ACCOUNT_PREFIX: &str = "OfficialAccount.";

/// Every value `command_label` can return: the commands of shared doc §8 in its order, then
/// `"OfficialAccount.*"` and `"other"` (for pre-initialising metrics).
pub const COMMAND_LABELS: [&str; 42] = [
    "State.StateChange",
    "Profile.CallbackPortraitSet",
    "Sns.CallbackPrevFriendAdd",
    "Sns.CallbackPrevFriendResponse",
    "Sns.CallbackFriendAdd",
    "Sns.CallbackFriendDelete",
    "Sns.CallbackBlackListAdd",
    "Sns.CallbackBlackListDelete",
    "C2C.CallbackBeforeSendMsg",
    "C2C.CallbackAfterSendMsg",
    "C2C.CallbackAfterMsgReport",
    "C2C.CallbackAfterMsgWithDraw",
    "Group.CallbackBeforeCreateGroup",
    "Group.CallbackAfterCreateGroup",
    "Group.CallbackBeforeApplyJoinGroup",
    "Group.CallbackBeforeInviteJoinGroup",
    "Group.CallbackAfterNewMemberJoin",
    "Group.CallbackAfterMemberExit",
    "Group.CallbackBeforeSendMsg",
    "Group.CallbackAfterSendMsg",
    "Group.CallbackAfterGroupFull",
    "Group.CallbackAfterGroupDestroyed",
    "Group.CallbackAfterGroupInfoChanged",
    "Group.CallbackOnMemberStateChange",
    "Group.CallbackSendMsgException",
    "Group.CallbackAfterRecallMsg",
    "Group.CallbackBeforeCreateTopic",
    "Group.CallbackAfterCreateTopic",
    "Group.CallbackAfterTopicDestroyed",
    "Group.CallbackAfterTopicInfoChanged",
    "Group.CallbackAfterMemberFieldChanged",
    "Group.CallbackAfterGroupAttrChanged",
    "Group.CallbackAfterReadReceipt",
    "Group.CallbackAfterChangeGroupOwner",
    "Bot.OnC2CMessage",
    "Bot.OnGroupMessage",
    "ContentCallback.ResultNotify",
    "Alert.RequestOverLimit",
    "Push.OfflinePush",
    "Push.AllMemberPush",
    OFFICIAL_ACCOUNT_LABEL,
    OTHER_COMMAND_LABEL,
];

/// Bounded `command` metric label: the command itself when shared doc §8 lists it (exact, case-sensitive),
/// `"OfficialAccount.*"` for any command starting with `OfficialAccount.`, else `"other"`.
pub fn command_label(command: &str) -> &'static str {
    if command.starts_with(OFFICIAL_ACCOUNT_PREFIX) {
        return OFFICIAL_ACCOUNT_LABEL;
    }
    // The two trailing entries are the catch-all labels, never matched literally.
    COMMAND_LABELS[..COMMAND_LABELS.len() - 2]
        .iter()
        .find(|label| **label == command)
        .copied()
        .unwrap_or(OTHER_COMMAND_LABEL)
}

/// Whether `command` is a before-callback (its name contains `Before` or `Prev`, shared doc §4/§8): the
/// answer's `ErrorCode` decides whether the user's action goes ahead, so OK lets it through.
pub fn is_before_callback(command: &str) -> bool {
    command.contains("Before") || command.contains("Prev")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_is_its_own_label() {
        for label in &COMMAND_LABELS[..40] {
            assert_eq!(command_label(label), *label);
        }
        let mut sorted = COMMAND_LABELS.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), COMMAND_LABELS.len(), "labels are unique");
    }

    #[test]
    fn official_account_commands_share_one_label_and_the_rest_is_other() {
        assert_eq!(command_label("OfficialAccount.CallbackAfterSubscribe"), OFFICIAL_ACCOUNT_LABEL);
        assert_eq!(command_label("OfficialAccount."), OFFICIAL_ACCOUNT_LABEL);
        for command in ["", "other", "OfficialAccount", "officialaccount.x", "group.callbacksendmsgexception", "*"] {
            assert_eq!(command_label(command), OTHER_COMMAND_LABEL, "{command:?}");
        }
        // Sent as commands, "other" is unknown and "OfficialAccount.*" has the prefix: both map to themselves.
        assert_eq!(command_label(OTHER_COMMAND_LABEL), OTHER_COMMAND_LABEL);
        assert_eq!(command_label(OFFICIAL_ACCOUNT_LABEL), OFFICIAL_ACCOUNT_LABEL);
        assert!(COMMAND_LABELS.iter().all(|label| COMMAND_LABELS.contains(&command_label(label))));
    }

    #[test]
    fn before_callbacks_have_before_or_prev_in_the_name() {
        let before: Vec<&str> = COMMAND_LABELS.iter().copied().filter(|c| is_before_callback(c)).collect();
        assert_eq!(
            before,
            [
                "Sns.CallbackPrevFriendAdd",
                "Sns.CallbackPrevFriendResponse",
                "C2C.CallbackBeforeSendMsg",
                "Group.CallbackBeforeCreateGroup",
                "Group.CallbackBeforeApplyJoinGroup",
                "Group.CallbackBeforeInviteJoinGroup",
                "Group.CallbackBeforeSendMsg",
                "Group.CallbackBeforeCreateTopic",
            ]
        );
        assert!(is_before_callback("Whatever.CallbackBeforeAnything"));
        assert!(!is_before_callback("Group.CallbackSendMsgException"));
        assert!(!is_before_callback("Group.Callbackbeforesendmsg"));
    }
}
