// Frontend WebSocket connection
const ws = new WebSocket("ws://localhost:8080/ws?token=jwt_token");

ws.onmessage = function (event) {
  const message = JSON.parse(event.data);

  if (message.type === "event") {
    const eventData = message.payload;

    switch (eventData.event_name) {
      case "razorpay.payment.captured":
        showPaymentSuccess(eventData.payload);
        break;
      case "user.profile.updated":
        refreshUserProfile();
        break;
      default:
        console.log("Received event:", eventData);
    }
  }
};

function showPaymentSuccess(paymentData) {
  // Display success notification
  showNotification({
    type: "success",
    title: "Payment Successful!",
    message: `Payment of ₹${paymentData.payment.amount / 100} received.`,
  });

  // Update UI state
  updatePaymentStatus("completed");
}
