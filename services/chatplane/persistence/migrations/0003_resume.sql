-- Resume (docs/resume.md): where each streamed delta of an assistant answer ended, so that
-- ResumeChat replays a stored answer with the sequence numbers it was streamed with. One row
-- per answer that has them; the ends are code points from the start of the text, ascending,
-- comma-separated (the same form as in SQLite).
CREATE TABLE answer_deltas (
    message_id text COLLATE "C" PRIMARY KEY REFERENCES messages (message_id) ON DELETE CASCADE,
    delta_ends text NOT NULL
);
