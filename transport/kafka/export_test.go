package kafkatransport

import (
	"context"

	"github.com/courierkit/courier/message"
)

// ProduceSync writes msgs to topic (which must exist) through the
// transport's producer on the calling goroutine and returns the
// producer's own result. Unlike Publish, which returns at ctx's end while
// the producer may still be at work, it returns only when the producer is
// done with the call, so a test knows what the call sent.
func (t *Transport) ProduceSync(ctx context.Context, topic string, msgs ...*message.Message) error {
	recs := make([]outRecord, len(msgs))
	for i, m := range msgs {
		r, err := t.record(i, m)
		if err != nil {
			return err
		}
		recs[i] = r
	}
	return t.prod.produce(ctx, topic, recs)
}
