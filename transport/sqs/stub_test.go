package sqstransport_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stubFIFO is a FIFO queue served over SQS's JSON protocol the way AWS
// serves it where goaws does not: one ReceiveMessage may return several
// messages of one message group (in order), and a group whose messages
// are in flight returns nothing until they are deleted or visible again.
// It keeps one queue whatever the URL.
type stubFIFO struct {
	srv *httptest.Server

	mu    sync.Mutex
	msgs  []*stubMsg // in send order; deleted ones removed
	seq   int
	calls []string // "op handle..." of the settling calls, in order
	// hang, when set, blocks every ChangeMessageVisibility, SendMessage
	// and Publish until it is closed (or the request is cancelled).
	hang chan struct{}
}

type stubMsg struct {
	id, group, key string
	visibleAt      time.Time
	receives       int
	handle         string // of the latest receive
}

func newStubFIFO(t *testing.T) *stubFIFO {
	s := &stubFIFO{}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// add enqueues a courier message with ID id and Key key in group key.
func (s *stubFIFO) add(id, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, &stubMsg{id: id, group: key, key: key})
}

func (s *stubFIFO) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

func (s *stubFIFO) remaining() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *stubFIFO) serve(w http.ResponseWriter, r *http.Request) {
	op := r.Header.Get("X-Amz-Target")
	op = op[strings.LastIndexByte(op, '.')+1:]
	body, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/x-amz-json-1.0")
	var in struct {
		MaxNumberOfMessages int
		VisibilityTimeout   int
		ReceiptHandle       string
		Entries             []struct{ Id, ReceiptHandle string }
	}
	_ = json.Unmarshal(body, &in)
	switch op {
	case "ChangeMessageVisibility", "SendMessage", "SendMessageBatch", "Publish", "PublishBatch":
		s.mu.Lock()
		hang := s.hang
		s.mu.Unlock()
		if hang != nil {
			select {
			case <-hang:
			case <-r.Context().Done():
				return
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch op {
	case "CreateQueue", "GetQueueUrl":
		_ = json.NewEncoder(w).Encode(map[string]string{"QueueUrl": "http://" + r.Host + "/000/q.fifo"})
	case "GetQueueAttributes":
		_ = json.NewEncoder(w).Encode(map[string]any{"Attributes": map[string]string{"QueueArn": "arn:aws:sqs:us-east-1:000:q"}})
	case "ReceiveMessage":
		out := s.receive(in.MaxNumberOfMessages, in.VisibilityTimeout)
		if len(out) == 0 {
			// A short long poll, without the lock.
			s.mu.Unlock()
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Millisecond):
			}
			s.mu.Lock()
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Messages": out})
	case "ChangeMessageVisibility":
		s.calls = append(s.calls, "visible "+s.idOf(in.ReceiptHandle)+" "+strconv.Itoa(in.VisibilityTimeout))
		for _, m := range s.msgs {
			if m.handle == in.ReceiptHandle {
				m.visibleAt = time.Now().Add(time.Duration(in.VisibilityTimeout) * time.Second)
			}
		}
		_, _ = io.WriteString(w, "{}")
	case "DeleteMessageBatch":
		ok := []any{}
		for _, e := range in.Entries {
			s.calls = append(s.calls, "delete "+s.idOf(e.ReceiptHandle))
			for i, m := range s.msgs {
				if m.handle == e.ReceiptHandle {
					s.msgs = append(s.msgs[:i], s.msgs[i+1:]...)
					break
				}
			}
			ok = append(ok, map[string]string{"Id": e.Id})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Successful": ok, "Failed": []any{}})
	case "SendMessage":
		s.calls = append(s.calls, "send")
		_ = json.NewEncoder(w).Encode(map[string]string{"MessageId": "x"})
	case "SendMessageBatch":
		ok := []any{}
		for _, e := range in.Entries {
			s.calls = append(s.calls, "send")
			ok = append(ok, map[string]string{"Id": e.Id, "MessageId": "x"})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"Successful": ok, "Failed": []any{}})
	default:
		_, _ = io.WriteString(w, "{}")
	}
}

// idOf returns the ID of the message a receipt handle belongs to.
func (s *stubFIFO) idOf(handle string) string {
	id, _, _ := strings.Cut(handle, "#")
	return id
}

// receive returns up to max messages in order, skipping every group with
// a message in flight, and makes them invisible for vis seconds.
func (s *stubFIFO) receive(max, vis int) []any {
	now := time.Now()
	blocked := map[string]bool{}
	for _, m := range s.msgs {
		if m.visibleAt.After(now) {
			blocked[m.group] = true
		}
	}
	var out []any
	for _, m := range s.msgs {
		if len(out) == max {
			break
		}
		if blocked[m.group] {
			continue
		}
		s.seq++
		m.receives++
		m.handle = fmt.Sprintf("%s#%d", m.id, s.seq)
		m.visibleAt = now.Add(time.Duration(vis) * time.Second)
		out = append(out, map[string]any{
			"MessageId": "sqs-" + m.id, "ReceiptHandle": m.handle, "Body": m.id,
			"Attributes": map[string]string{
				"ApproximateReceiveCount": strconv.Itoa(m.receives),
				"SentTimestamp":           "1700000000000",
				"MessageGroupId":          m.group,
			},
			"MessageAttributes": map[string]any{"courier": map[string]string{
				"DataType": "String", "StringValue": `{"v":1,"id":"` + m.id + `","k":"` + m.key + `"}`,
			}},
		})
	}
	return out
}
