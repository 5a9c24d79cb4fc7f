// Package amqptransport is courier's RabbitMQ transport (AMQP 0-9-1, on
// github.com/rabbitmq/amqp091-go), registered for amqp:// and amqps://.
// The full documentation is being written.
package amqptransport
