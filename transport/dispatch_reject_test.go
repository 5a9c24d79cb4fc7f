package transport_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Reject settles a message the adapter cannot decode down the dead-letter
// path without running the handler: dead-letter topic then Ack (Nack when
// that publish fails), else Term, else a logged drop (Ack); the Settled
// hook reports each with the cause as a permanent HandlerErr.
func TestDispatcherReject(t *testing.T) {
	cause := errors.New("malformed header")
	for _, tc := range []struct {
		name    string
		dlTopic string
		dlErr   error
		term    bool
		want    transport.Outcome
		acks    int
		nacks   int
		terms   int
		publish int
	}{
		{name: "dead-letter topic", dlTopic: "dlq", want: transport.DeadLettered, acks: 1, publish: 1},
		{name: "dead-letter publish fails", dlTopic: "dlq", dlErr: errors.New("broker down"), want: transport.Nacked, nacks: 1, publish: 1},
		{name: "native terminate", term: true, want: transport.Terminated, terms: 1},
		{name: "drop", want: transport.Dropped, acks: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var published []*message.Message
			var got []transport.Settlement
			ran := false
			d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(context.Context, *message.Message) error {
				ran = true
				return nil
			}), transport.DispatchOptions{
				Topic: "orders", Group: "g",
				Subscribe: transport.SubscribeOptions{DeadLetterTopic: tc.dlTopic, Settled: func(_ context.Context, _ *message.Message, s transport.Settlement) {
					got = append(got, s)
				}},
				DeadLetter: func(_ context.Context, topic string, m *message.Message) error {
					published = append(published, m)
					return tc.dlErr
				},
			})
			rec := newAcker()
			var a transport.Acker = rec
			if tc.term {
				a = termAcker{rec}
			}
			m := &message.Message{ID: "raw-1", Topic: "orders", Payload: []byte("?"), Headers: message.Header{"x": "y"}}
			d.Reject(m, a, cause)
			if ran {
				t.Error("Reject ran the handler")
			}
			if rec.acks != tc.acks || len(rec.nacks) != tc.nacks || len(rec.terms) != tc.terms || len(published) != tc.publish {
				t.Errorf("acks %d nacks %d terms %d dead-letter publishes %d; want %d %d %d %d",
					rec.acks, len(rec.nacks), len(rec.terms), len(published), tc.acks, tc.nacks, tc.terms, tc.publish)
			}
			if tc.publish == 1 {
				dm := published[0]
				if r := dm.Headers[message.HeaderDeadLetterReason]; !strings.Contains(r, "malformed header") {
					t.Errorf("dead letter reason %q", r)
				}
				if string(dm.Payload) != "?" || dm.Headers["x"] != "y" {
					t.Errorf("dead letter lost the payload or headers: %q %v", dm.Payload, dm.Headers)
				}
			}
			if tc.term && !strings.Contains(rec.terms[0], "malformed header") {
				t.Errorf("term reason %q", rec.terms[0])
			}
			if len(got) != 1 || got[0].Outcome != tc.want || !errors.Is(got[0].HandlerErr, cause) || !message.IsPermanent(got[0].HandlerErr) {
				t.Fatalf("settlements %+v; want one %v with the permanent cause", got, tc.want)
			}
			if tc.dlErr != nil && !errors.Is(got[0].SettleErr, tc.dlErr) {
				t.Errorf("SettleErr %v, want the dead-letter publish error", got[0].SettleErr)
			}
			if err := d.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
