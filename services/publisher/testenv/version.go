package testenv

import "github.com/IBM/sarama"

// kafkaVersion is the protocol version the tests speak; kfake supports
// current versions.
var kafkaVersion = sarama.V3_6_0_0
