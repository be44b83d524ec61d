//! Notes (meeting minutes) on the wire.

use crate::ToProto;
use crate::time::timestamp_to_proto;
use tollgate_domain::note::Note;
use tollgate_proto::v1 as proto;

impl ToProto for Note {
    type Proto = proto::Note;
    fn to_proto(&self) -> proto::Note {
        let Note {
            id,
            release,
            text,
            action,
            author,
            at,
            done,
        } = self;
        proto::Note {
            id: *id,
            release: release.to_string(),
            text: text.clone(),
            action_owner: action
                .as_ref()
                .map(|action| action.owner.clone())
                .unwrap_or_default(),
            due: action
                .as_ref()
                .map(|action| action.due.to_string())
                .unwrap_or_default(),
            author: author.clone(),
            at: Some(timestamp_to_proto(*at)),
            done_at: done.as_ref().map(|done| timestamp_to_proto(done.at)),
            done_by: done
                .as_ref()
                .map(|done| done.by.clone())
                .unwrap_or_default(),
            done_comment: done
                .as_ref()
                .and_then(|done| done.comment.clone())
                .unwrap_or_default(),
        }
    }
}
