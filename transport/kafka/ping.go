package kafkatransport

import (
	"context"
	"errors"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/transport"
)

var _ transport.Pinger = (*Transport)(nil)

// Ping checks the cluster with a round trip (transport.Pinger): an
// ApiVersions request to the controller broker on the client's
// connection. When that fails (the controller moved, its connection
// broke) it refreshes the metadata from any reachable broker, finds the
// controller again and asks once more, so a healthy cluster whose
// controller changed is healthy. It returns transport.ErrClosed after
// Close or Shutdown and ctx.Err() when ctx ends first. The sarama calls
// cannot be interrupted: one outliving ctx ends within Options' network
// timeouts (or at Close) in the background.
func (t *Transport) Ping(ctx context.Context) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	res := make(chan error, 1)
	go func() { res <- t.ping() }()
	select {
	case err := <-res:
		if err == nil {
			return nil
		}
		if t.isClosed() {
			return transport.ErrClosed
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return transport.ErrClosed
	}
}

func (t *Transport) ping() error {
	b, err := t.client.Controller()
	if err == nil {
		if err = apiVersions(b); err == nil {
			return nil
		}
	}
	first := err
	b, err = t.client.RefreshController()
	if err != nil {
		return t.wrap("ping: find the controller", errors.Join(first, err))
	}
	if err := apiVersions(b); err != nil {
		return t.wrap("ping: controller "+b.Addr(), err)
	}
	return nil
}

// apiVersions sends an ApiVersions request (version 0, which every broker
// answers) to b.
func apiVersions(b *sarama.Broker) error {
	resp, err := b.ApiVersions(&sarama.ApiVersionsRequest{Version: 0})
	if err != nil {
		return err
	}
	if resp.ErrorCode != 0 {
		return sarama.KError(resp.ErrorCode)
	}
	return nil
}
