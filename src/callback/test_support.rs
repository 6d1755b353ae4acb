//! Shared fixtures of the module's unit tests: an app registry without a token and a fixed arrival time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::query::{AuthenticatedQuery, RawQuery};
use super::sign::AppRegistry;

/// `raw` authenticated for app 1400000000, which has no token.
pub fn query(raw: &str) -> AuthenticatedQuery<'_> {
    AppRegistry::new([(1_400_000_000, vec![])], Duration::from_secs(60))
        .authenticate(RawQuery::parse(raw).unwrap(), 0)
        .unwrap()
}

/// The arrival time every fixture's expected event uses.
pub fn received() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_670_574_415_007)
}

/// The documented sample body of `Group.CallbackSendMsgException`, byte for byte (as in tests/common/tencent.rs).
pub const SAMPLE_BODY: &str = concat!(
    "{\"CallbackCommand\":\"Group.CallbackSendMsgException\",\"GroupId\":\"@TGS#2J4SZEAEL\",\"Type\":\"Public\",\n",
    " \"From_Account\":\"jared\",\"Operator_Account\":\"admin\",\"Random\":123456,\"OnlineOnlyFlag\":1,\n",
    " \"MsgBody\":[{\"MsgType\":\"TIMTextElem\",\"MsgContent\":{\"Text\":\"red packet\"}}],\n",
    " \"CloudCustomData\":\"your cloud custom data\",\"ErrorCode\":10023,\n",
    " \"ErrorInfo\":\"msg count exceeds limit,please retry later\",\"EventTime\":\"1670574414123\"}"
);

/// Bodies as the bench sends them (examples/loadgen.rs): each MsgBody element kind, UTF-8 and emoji, escaped
/// quotes and JSON inside strings, CloudCustomData, TopicId, integers and decimals.
pub const BENCH_BODIES: [&str; 5] = [
    concat!(
        r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#2KQ7XM4ZB","Type":"AVChatRoom","#,
        r#""From_Account":"user_1837420","Operator_Account":"user_1837420","Random":2870013914,"OnlineOnlyFlag":0,"#,
        r#""MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"主播好厉害！"}},{"MsgType":"TIMTextElem","#,
        r#""MsgContent":{"Text":"hello everyone 👋 🎉🎉🎉"}}],"CloudCustomData":"{\"level\":37,\"badge\":\"vip4\","#,
        r#"\"trace\":\"9f3c2a1b7e6d5c4b\"}","ErrorCode":10023,"ErrorInfo":"msg count exceeds limit,"#,
        r#"please retry later","EventTime":1670574414123}"#,
    ),
    concat!(
        r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#2RT5ZQ3WA","Type":"AVChatRoom","#,
        r#""From_Account":"13512345678","Operator_Account":"administrator","Random":1193046,"OnlineOnlyFlag":0,"#,
        r#""MsgBody":[{"MsgType":"TIMCustomElem","MsgContent":{"Data":"{\"type\":\"gift\",\"giftId\":231,"#,
        r#"\"count\":52,\"anchor\":\"user_77213\",\"combo\":true}","Desc":"gift","Ext":"live","Sound":""}},"#,
        r#"{"MsgType":"TIMTextElem","MsgContent":{"Text":"He said \"see you tomorrow\" and left"}}],"#,
        r#""CloudCustomData":"","ErrorCode":10023,"ErrorInfo":"msg count exceeds limit,please retry later","#,
        r#""EventTime":"1670574414123","MsgSeq":8812331,"MsgTime":1700512345}"#,
    ),
    concat!(
        r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#_2B7QZKXN4MA","Type":"Community","#,
        r#""From_Account":"a3f29c81d7e0","Operator_Account":"a3f29c81d7e0","Random":4011,"OnlineOnlyFlag":1,"#,
        r#""MsgBody":[{"MsgType":"TIMImageElem","MsgContent":{"UUID":"8c4f1e2a9b3d7c60a1f2e3d4c5b6a798","#,
        r#""ImageFormat":2,"ImageInfoArray":[{"Type":1,"Size":1553920,"Width":1920,"Height":2428,"#,
        r#""URL":"https://cos.example.com/img/8c4f1e2a9b3d7c60a1f2e3d4c5b6a798_1.jpg"},{"Type":2,"Size":388480,"#,
        r#""Width":960,"Height":1214,"URL":"https://cos.example.com/img/8c4f1e2a9b3d7c60a1f2e3d4c5b6a798_2.jpg"},"#,
        r#"{"Type":3,"Size":155392,"Width":640,"Height":809,"#,
        r#""URL":"https://cos.example.com/img/8c4f1e2a9b3d7c60a1f2e3d4c5b6a798_3.jpg"}]}}],"#,
        r#""CloudCustomData":"{\"level\":5,\"badge\":\"vip1\",\"trace\":\"5e0d1c2b3a495867\"}","ErrorCode":80001,"#,
        r#""ErrorInfo":"message contains sensitive words","EventTime":"1670574414123","#,
        r#""TopicId":"@TGS#_2B7QZKXN4MA@TOPIC#_412"}"#,
    ),
    concat!(
        r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#3MZ2K7QPA","Type":"Public","#,
        r#""From_Account":"user_90211","Operator_Account":"user_90211","Random":77001234,"OnlineOnlyFlag":1,"#,
        r#""MsgBody":[{"MsgType":"TIMVideoFileElem","#,
        r#""MsgContent":{"VideoUrl":"https://cos.example.com/v/1f2e3d4c5b6a79880f1e2d3c4b5a6978.mp4","#,
        r#""VideoUUID":"1f2e3d4c5b6a79880f1e2d3c4b5a6978","VideoSize":4821337,"VideoSecond":37,"VideoFormat":"mp4","#,
        r#""VideoDownloadFlag":2,"ThumbUrl":"https://cos.example.com/v/1f2e3d4c5b6a79880f1e2d3c4b5a6978.jpg","#,
        r#""ThumbUUID":"1f2e3d4c5b6a79880f1e2d3c4b5a6978_t","ThumbSize":23311,"ThumbWidth":360,"ThumbHeight":640,"#,
        r#""ThumbFormat":"JPG","ThumbDownloadFlag":2}},{"MsgType":"TIMTextElem","#,
        r#""MsgContent":{"Text":"line one\nline two\ttabbed"}}],"ErrorCode":20006,"#,
        r#""ErrorInfo":"blocked by the before-send callback","EventTime":1670574414123}"#,
    ),
    concat!(
        r#"{"CallbackCommand":"Group.CallbackSendMsgException","GroupId":"@TGS#2WQ4M6ZTB","Type":"Work","#,
        r#""From_Account":"user_4471","Operator_Account":"user_4471","Random":3100987001,"OnlineOnlyFlag":0,"#,
        r#""MsgBody":[{"MsgType":"TIMLocationElem","MsgContent":{"Desc":"Shenzhen, Nanshan","Latitude":22.540503,"#,
        r#""Longitude":113.934528}},{"MsgType":"TIMSoundElem","#,
        r#""MsgContent":{"Url":"https://cos.example.com/snd/0a1b2c3d4e5f60718293a4b5c6d7e8f9.m4a","#,
        r#""UUID":"0a1b2c3d4e5f60718293a4b5c6d7e8f9","Size":18233,"Second":12,"Download_Flag":2}},"#,
        r#"{"MsgType":"TIMFaceElem","MsgContent":{"Index":17,"Data":"face_42"}}],"CloudCustomData":"{\"level\":12,"#,
        r#"\"badge\":\"vip0\",\"trace\":\"ab12cd34ef56ab78\"}","ErrorCode":10016,"ErrorInfo":"今天的直播太精彩了，感谢大家的支持","#,
        r#""EventTime":"1670574414123"}"#,
    ),
];
